"""Records the store hands out and takes in. Plain frozen data, no behaviour beyond views."""

from __future__ import annotations

from dataclasses import dataclass, field

from clobi.errors import UsageError
from clobi.model.spec import JobSpec
from clobi.model.states import AttemptState, JobState


@dataclass(frozen=True)
class Submission:
    """One submit: a spec (maybe an array) whose input sandbox is already stored."""

    spec: JobSpec
    input_sha256: str | None = None
    owner: str = ""
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Capacity:
    """Free resources an agent offers to a claim."""

    cpus: float
    memory_bytes: int
    gpus: int = 0
    labels: frozenset[str] = frozenset()


@dataclass(frozen=True)
class AgentInfo:
    """What an agent says about itself when it registers."""

    name: str
    host: str
    cpus: float
    memory_bytes: int
    gpus: int = 0
    labels: frozenset[str] = frozenset()
    pool: str = "local"
    pid: int = 0
    instance_id: int | None = None  # the manager's instance it runs on, if any


@dataclass(frozen=True)
class Claim:
    """A job handed to an agent: its attempt, lease and everything needed to run it."""

    attempt_id: int
    job_id: int
    spec: JobSpec
    array_index: int | None
    input_sha256: str | None
    lease_until: float


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, reported by the agent after its output is stored.

    `user_error` marks failures that retrying cannot fix (a rejected sandbox): no retry.
    Small outputs travel inline in `output_inline`; large ones are in the sandbox store under
    `output_key`.
    """

    attempt_id: int
    state: AttemptState
    exit_code: int | None = None
    reason: str = ""
    user_error: bool = False
    output_key: str | None = None
    output_inline: bytes | None = None
    output_size: int = 0
    output_sha256: str = ""


@dataclass(frozen=True)
class HeartbeatReply:
    """What a heartbeat tells an agent.

    `renewed`: attempts whose lease now runs to `lease_until`; any attempt the agent sent that
    is not in `renewed` is no longer its own and must be stopped at once. `cancel`: attempts the
    user killed. `drain`: stop claiming, finish what runs, exit.
    """

    renewed: frozenset[int]
    cancel: frozenset[int]
    drain: bool
    lease_until: float


@dataclass(frozen=True)
class JobRecord:
    """One job as the store keeps it: its state, counters and how it last ended."""

    id: int
    spec_id: int
    name: str
    state: JobState
    priority: int
    array_index: int | None
    created_at: float
    updated_at: float
    attempts: int
    retries_left: int
    lost_count: int
    exit_code: int | None
    reason: str
    tags: tuple[str, ...]
    owner: str
    current_attempt: int | None
    cancel_requested: bool
    not_before: float


@dataclass(frozen=True)
class AttemptRecord:
    """One try at running a job, on one agent."""

    id: int
    job_id: int
    agent_id: int
    agent_name: str
    state: AttemptState
    started_at: float
    ended_at: float | None
    lease_until: float
    exit_code: int | None
    reason: str
    workdir: str  # the attempt's work directory on its agent's machine ("" if unknown)
    has_output: bool


@dataclass(frozen=True)
class AgentRecord:
    """An agent as the store knows it: what it offers, when it was last heard from."""

    id: int
    name: str
    host: str
    pool: str
    state: str
    cpus: float
    memory_bytes: int
    gpus: int
    labels: tuple[str, ...]
    started_at: float
    last_seen: float
    drain: bool
    running: int
    pid: int
    instance_id: int | None = None
    idle_since: float | None = None  # as of its last heartbeat; None while it runs jobs


@dataclass(frozen=True)
class Event:
    """One entry of the session's history: what happened to a job, an attempt or an agent."""

    id: int
    ts: float
    job_id: int | None
    attempt_id: int | None
    agent_id: int | None
    kind: str
    from_state: str
    to_state: str
    detail: str


@dataclass(frozen=True)
class OutputRef:
    """Where one attempt's output archive lives."""

    attempt_id: int
    job_id: int
    key: str | None
    inline: bytes | None
    size: int
    sha256: str


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a listing returns, and in which order.

    Filters: `states` (any of), `tags` (all of), `ids`, `owner`, `text` (a case-insensitive
    substring of the name; `%` and `_` match themselves). Order: by `sort`, one of
    `JOB_SORTS` (`created` is the id order: ids are handed out as jobs are created; `state`
    goes by the state's name), ties by id, all reversed when `descending`.

    Pages, either way: a keyset cursor, the previous page's last job (its id as `after_id` and,
    for `priority`, `state` and `updated`, its value of the sort key as `after_value`), which
    stays exact while jobs change; or `offset` jobs skipped, to jump to page N (the store walks
    the skipped jobs). With the id order, `after_id` alone pages as it always did; `after_id` 0
    means "from the start" in either direction.
    """

    states: frozenset[JobState] = frozenset()
    tags: frozenset[str] = frozenset()
    ids: tuple[int, ...] = ()
    owner: str | None = None
    after_id: int = 0
    limit: int | None = 100
    text: str | None = None
    sort: str = "id"
    descending: bool = False
    after_value: int | float | str | None = None
    offset: int = 0

    def __post_init__(self) -> None:
        if self.sort not in JOB_SORTS:
            raise UsageError(f"sort: must be one of {', '.join(JOB_SORTS)}, not {self.sort!r}")
        if self.offset < 0:
            raise UsageError("offset: must be 0 or more")
        if self.sort in KEYED_SORTS and self.after_id > 0 and self.after_value is None:
            raise UsageError(f"after_value: a page sorted by {self.sort} starts after a value")

    def sort_key(self, job: JobRecord) -> tuple[int | float | str, int]:
        """Where `job` goes in this filter's order (ascending; reverse when `descending`)."""
        attribute = {"updated": "updated_at", "created": "id"}.get(self.sort, self.sort)
        return getattr(job, attribute), job.id


# Orders of job listings; a keyset cursor of the keyed ones carries the sort key's value.
KEYED_SORTS = ("priority", "state", "updated")
JOB_SORTS = ("id", "created", *KEYED_SORTS)


@dataclass(frozen=True)
class SweepResult:
    """What one sweep for lost agents and attempts changed."""

    lost_attempts: tuple[int, ...] = ()
    requeued_jobs: tuple[int, ...] = ()
    failed_jobs: tuple[int, ...] = ()
    cancelled_jobs: tuple[int, ...] = ()
    lost_agents: tuple[int, ...] = field(default_factory=tuple)
