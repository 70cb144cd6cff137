"""The store contract. Engines: `sqlite` (embedded), later `postgres` (shared).

Every state change is a conditional update that also appends an event, inside one
transaction. Reports about an attempt carry its id and are refused once the attempt is no
longer the job's current one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from clobi.model.auth import TokenRecord
from clobi.model.instances import AgentLoad, InstanceRecord, InstanceState, QueuedClass
from clobi.model.records import (
    AgentInfo,
    AgentRecord,
    AttemptRecord,
    Capacity,
    Claim,
    Event,
    HeartbeatReply,
    JobFilter,
    JobRecord,
    Outcome,
    OutputRef,
    Submission,
    SweepResult,
)
from clobi.model.spec import JobSpec
from clobi.model.states import JobState


@dataclass(frozen=True)
class ClaimRequest:
    """Ask for up to `limit` jobs that together fit `capacity` and each fit `per_job`,
    leased for `lease_s` seconds."""

    agent_id: int
    capacity: Capacity
    limit: int
    lease_s: float
    workdir_root: str = ""
    per_job: Capacity | None = None  # the most one job may need (default: `capacity`)


LOG_STREAMS = ("stdout", "stderr")
LOG_TAIL_MAX_BYTES = 1 << 20  # kept per running attempt and stream


@dataclass(frozen=True)
class LogTail:
    """Bytes of an attempt's `stream` (stdout or stderr), starting at byte `offset` of it."""

    attempt_id: int
    stream: str
    offset: int
    data: bytes


class Wakeup(Protocol):
    """A handle that becomes readable when claimable work may have appeared."""

    def fileno(self) -> int: ...
    def rang(self) -> bool:
        """Consume pending wake-ups; True if there were any."""
        ...

    def close(self) -> None: ...


class Store(ABC):
    """Contract of a Clobi store."""

    # --- submitting and reading -------------------------------------------------------
    @abstractmethod
    def submit(self, submission: Submission) -> list[int]:
        """Create the job(s) of one spec in one durable transaction; return their ids in
        array order. With an idempotency key already used, return the earlier submit's ids."""

    @abstractmethod
    def get_job(self, job_id: int) -> JobRecord:
        """One job; raises `NotFound`."""

    @abstractmethod
    def job_spec(self, job_id: int) -> tuple[JobSpec, str | None]:
        """The spec a job was submitted with and its input sandbox sha256."""

    @abstractmethod
    def list_jobs(self, flt: JobFilter) -> list[JobRecord]:
        """Jobs matching `flt`, in its order (see `JobFilter`: sorts, cursors, offsets)."""

    @abstractmethod
    def count_states(self, job_ids: Sequence[int] | None = None) -> dict[JobState, int]:
        """How many jobs (of `job_ids`, or all) are in each state."""

    @abstractmethod
    def attempts(self, job_id: int) -> list[AttemptRecord]:
        """A job's attempts, oldest first."""

    @abstractmethod
    def events(
        self, job_id: int | None = None, after_id: int = 0, limit: int = 1000
    ) -> list[Event]:
        """Events (of one job, or all) with id > `after_id`, oldest first."""

    @abstractmethod
    def output_ref(self, job_id: int, attempt_id: int | None = None) -> OutputRef | None:
        """Where the output of an attempt (default: the job's latest with output) lives."""

    # --- user actions -------------------------------------------------------------------
    @abstractmethod
    def kill(self, job_ids: Sequence[int]) -> list[int]:
        """Cancel queued jobs at once and ask agents to stop running ones; return the ids
        that were queued or running."""

    @abstractmethod
    def remove(self, job_ids: Sequence[int]) -> list[int]:
        """Delete queued or finished jobs; raises `Conflict` for running ones (kill first)."""

    @abstractmethod
    def retry(self, job_ids: Sequence[int]) -> list[int]:
        """Requeue finished, unsuccessful jobs; return the ids requeued."""

    # --- agents -----------------------------------------------------------------------
    @abstractmethod
    def register_agent(self, info: AgentInfo) -> int:
        """Record a new agent; return its id."""

    @abstractmethod
    def claim(self, request: ClaimRequest) -> list[Claim]:
        """In one transaction: pick queued jobs by priority then age that fit the capacity,
        create their attempts with leases and mark them running."""

    @abstractmethod
    def finish(
        self, agent_id: int, outcomes: Sequence[Outcome], then: ClaimRequest | None = None
    ) -> tuple[list[int], list[Claim]]:
        """Record outcomes (and optionally claim more) in one transaction. Returns the
        attempt ids whose report was refused as stale, and the new claims."""

    @abstractmethod
    def heartbeat(
        self, agent_id: int, attempt_ids: Sequence[int], lease_s: float
    ) -> HeartbeatReply:
        """Renew the agent's liveness and its running attempts' leases."""

    @abstractmethod
    def set_drain(self, agent_id: int, drain: bool = True) -> None:
        """Ask an agent to drain (stop claiming, finish, exit)."""

    @abstractmethod
    def agent_exited(self, agent_id: int) -> None:
        """An agent says it is leaving."""

    @abstractmethod
    def list_agents(self, include_gone: bool = False) -> list[AgentRecord]:
        """Agents, live ones only unless `include_gone`."""

    # --- live logs -----------------------------------------------------------------------
    @abstractmethod
    def push_logs(self, agent_id: int, tails: Sequence[LogTail]) -> None:
        """Keep what the agent's running attempts wrote, for followers on other machines:
        per attempt and stream the newest `LOG_TAIL_MAX_BYTES`, each tail laid over what is
        kept from its offset on (a tail past the kept end starts afresh). Tails of attempts
        that are not this agent's running ones are ignored."""

    @abstractmethod
    def read_log(self, job_id: int, stream: str, offset: int = 0) -> LogTail | None:
        """What is kept of the job's current attempt's `stream` from `offset` on (from the
        oldest kept byte if `offset` is older); None when nothing is kept. The log of a
        finished attempt is in its output, not here."""

    # --- the resource manager ------------------------------------------------------------
    @abstractmethod
    def create_instance(
        self, pool: str, provider: str, cost_per_hour: float, reason: str
    ) -> InstanceRecord:
        """Record an instance about to be asked of a provider (state `requested`)."""

    @abstractmethod
    def set_instance(
        self,
        instance_id: int,
        state: InstanceState,
        reason: str,
        *,
        provider_id: str | None = None,
        expect: Sequence[InstanceState] = (),
    ) -> bool:
        """Move an instance to `state` (from one of `expect`, default: any live state), with
        why; `booting` stamps the launch time, ended states the end time. False if it was not
        in an expected state."""

    @abstractmethod
    def list_instances(
        self, pool: str | None = None, include_ended: bool = False
    ) -> list[InstanceRecord]:
        """Instances (of one pool), live ones only unless `include_ended`, oldest first."""

    @abstractmethod
    def queued_demand(self) -> list[QueuedClass]:
        """Claimable queued jobs counted per resource class and priority."""

    @abstractmethod
    def agent_loads(self) -> list[AgentLoad]:
        """What the running jobs of each busy agent use."""

    @abstractmethod
    def abandon_agent(self, agent_id: int, reason: str, lost_cap: int) -> SweepResult:
        """The agent is gone for good (its machine was killed): mark it gone and handle its
        running attempts as lost now (jobs requeued, or failed past `lost_cap` losses), rather
        than when their leases expire."""

    @abstractmethod
    def record_event(self, kind: str, detail: str, agent_id: int | None = None) -> None:
        """Append an event that is not a job's state change (the manager's decisions)."""

    @abstractmethod
    def get_meta(self, key: str) -> str | None:
        """A value the session keeps between runs of its components (None if unset)."""

    @abstractmethod
    def set_meta(self, key: str, value: str) -> None:
        """Keep `value` under `key`."""

    # --- sweeping -----------------------------------------------------------------------
    @abstractmethod
    def try_lock(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take or renew the named lock for `owner` until now + `ttl_s`; False when another
        owner holds it. Elects the one active sweeper."""

    @abstractmethod
    def sweep(self, lost_cap: int, agent_timeout_s: float) -> SweepResult:
        """Expired leases -> attempts `lost`, jobs requeued (or failed after `lost_cap`
        losses, or cancelled when a kill was pending); silent agents marked gone."""

    @abstractmethod
    def next_due_s(self) -> float | None:
        """Seconds until the earliest queued-but-backing-off job becomes claimable."""

    # --- access tokens ------------------------------------------------------------------
    @abstractmethod
    def create_token(self, record: TokenRecord, secret_sha256: str) -> None:
        """Store a new token (its id, role, scope and the sha256 of its secret)."""

    @abstractmethod
    def get_token(self, token_id: str) -> tuple[TokenRecord, str] | None:
        """A token and its secret's sha256, or None."""

    @abstractmethod
    def list_tokens(self) -> list[TokenRecord]:
        """Every token, oldest first (no secrets)."""

    @abstractmethod
    def revoke_token(self, token_id: str) -> bool:
        """Revoke a token; False if unknown or already revoked."""

    @abstractmethod
    def use_bootstrap(self, token_id: str) -> bool:
        """Spend a usable bootstrap token, atomically: True exactly once."""

    # --- time series for the dashboard's charts -------------------------------------------
    @abstractmethod
    def record_samples(self, ts: float, values: Mapping[str, float]) -> None:
        """Record one sample of each metric, taken at `ts` (epoch seconds), in one transaction.

        The value goes into the finest archive's bucket holding `ts` (levels and rates replace
        what the bucket held, counts add to it); then each coarser archive's bucket holding
        `ts` is recomputed from the finer archive's points inside it (levels and rates: their
        average; counts: their sum), for every metric with points there. Last, points older
        than each archive keeps (`bucket < ts - keep_s`) are dropped, whatever their metric:
        storage stays bounded by the archives, however long the session runs."""

    @abstractmethod
    def read_series(
        self, metrics: Sequence[str], since: float, until: float, step_s: int | None = None
    ) -> dict[str, list[tuple[float, float]]]:
        """Points `(bucket start, value)` of each metric whose bucket overlaps
        [`since`, `until`], oldest first; a metric without points maps to `[]`. A name
        ending in `*` stands for every metric that starts with the rest and has points there
        (`queued.p*`: one series per priority), each under its own name.

        The archive is the finest whose `keep_s` covers `until - since` (the coarsest when
        none does). With `step_s` (a multiple of some archive's step), the finest such
        archive covering the span is read and its points are merged into buckets of `step_s`
        seconds (levels and rates averaged, counts summed); raises `UsageError` otherwise."""

    @abstractmethod
    def count_finished(self, after_event_id: int | None) -> tuple[int, int]:
        """How many events with an id above `after_event_id` moved a job into a terminal
        state, and the newest event id (to pass next time). With None: `(0, newest id)`."""

    # --- event outlets: the outbox -----------------------------------------------------------
    @abstractmethod
    def enable_outlet(self, name: str) -> bool:
        """Queue every event inserted from now on for delivery to the outlet `name` (created
        when new); True if it was not enabled before. Events older than that are not queued."""

    @abstractmethod
    def disable_outlet(self, name: str) -> int:
        """Stop queueing events for the outlet and drop its pending deliveries; return how
        many were dropped."""

    @abstractmethod
    def take_deliveries(self, outlet: str, limit: int = 100) -> list[Delivery]:
        """The outlet's oldest pending deliveries (at most `limit`), in event id order, up to
        the first that is not due yet: a delivery that failed holds back the ones after it
        until its next try, so an outlet gets each job's events in order. Nothing is locked:
        one deliverer per outlet (elected with `try_lock`) takes and marks them."""

    @abstractmethod
    def mark_delivered(self, outlet: str, event_ids: Sequence[int]) -> None:
        """The outlet has taken these events (the broker confirmed them, the receiver
        answered 2xx): delete their deliveries."""

    @abstractmethod
    def mark_failed(self, outlet: str, event_id: int, retry_in_s: float, error: str) -> None:
        """Delivering the event failed (`error`, with no secret in it): count the attempt
        and try again in `retry_in_s` seconds, not before."""

    @abstractmethod
    def list_outlets(self) -> list[OutletStatus]:
        """Every outlet the store knows, enabled or not, by name, with its backlog."""

    def listen(self, name: str) -> Wakeup | None:
        """Subscribe to wake-ups for new work (None: the engine has none; poll instead)."""
        return None

    def watch_ends(self) -> Wakeup | None:
        """A handle that turns readable when jobs may have ended (reported, killed, failed
        by the sweeper), for waiters such as `Client.wait`; close it when done. None: the
        engine has none; poll instead."""
        return None

    @abstractmethod
    def close(self) -> None:
        """Release connections."""


# --- time series for the dashboard's charts ------------------------------------------------
@dataclass(frozen=True)
class Archive:
    """One resolution of the time series: a point per `step_s` seconds, kept for `keep_s`."""

    step_s: int
    keep_s: int


# Finest first; each coarser step is a multiple of the finer one (it is folded from it).
SERIES_ARCHIVES = (Archive(step_s=10, keep_s=86_400), Archive(step_s=300, keep_s=30 * 86_400))


class SeriesKind(StrEnum):
    """How a metric's points merge into a coarser bucket."""

    LEVEL = "level"  # a quantity at an instant (jobs queued, agents live): averaged
    RATE = "rate"  # events per second over the step (throughput): averaged
    COUNT = "count"  # events during the step (jobs finished): summed


SERIES_KINDS = {"throughput": SeriesKind.RATE, "finished": SeriesKind.COUNT}


def series_kind(metric: str) -> SeriesKind:
    """How `metric` merges (levels unless named in `SERIES_KINDS`)."""
    return SERIES_KINDS.get(metric, SeriesKind.LEVEL)


# --- event outlets: the outbox ---------------------------------------------------------------
@dataclass(frozen=True)
class Delivery:
    """An event waiting in the outbox for one outlet, and how its delivery went so far."""

    outlet: str
    event: Event
    attempts: int = 0  # failed tries so far
    next_try: float = 0.0  # not before this time (epoch seconds)
    error: str = ""  # why the last try failed


@dataclass(frozen=True)
class OutletStatus:
    """An outlet of the store: whether events are queued for it, and its backlog."""

    name: str
    enabled: bool
    since: float  # when it was last enabled or disabled
    pending: int  # events waiting for it
    head: Delivery | None = None  # the oldest of them: the one a failing delivery holds back
