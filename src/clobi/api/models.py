"""Request and response bodies of the API (pydantic), so the OpenAPI document is precise.

Responses are built from the store's records (`from_attributes`); requests are turned into
records by the routes. Specs travel two ways: a submit carries the spec as a user writes it
(validated by `parse_spec`, every problem listed), responses carry the stored `JobSpec`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Base64Bytes, BaseModel, ConfigDict, Field

from clobi.model.auth import Role
from clobi.model.instances import InstanceState
from clobi.model.spec import JobSpec
from clobi.model.states import AttemptState, JobState

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="sha256, lowercase hex")]
# The store keeps ids and sizes in 64-bit columns and counts and codes in 32-bit ones
# (PostgreSQL bigint and integer): larger numbers are refused as invalid requests (422) rather
# than overflowing in a driver (500).
INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1
Id = Annotated[int, Field(ge=1, le=INT64_MAX)]
JobId = Id
Size = Annotated[int, Field(ge=0, le=INT64_MAX)]
Count = Annotated[int, Field(ge=0, le=INT32_MAX)]
Int32 = Annotated[int, Field(ge=-INT32_MAX - 1, le=INT32_MAX)]
MAX_IDS = 100_000


class Record(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorBody(BaseModel):
    """Every error response: the error class, a message for people, and spec problems."""

    error: str = Field(description="Clobi's error class, e.g. NotFound, SpecError")
    message: str
    problems: list[str] = Field(default_factory=list)


# --- server ----------------------------------------------------------------------------------
class Health(BaseModel):
    status: str = "ok"


class PrincipalOut(Record):
    role: Role
    name: str
    pool: str


class SettingsOut(Record):
    lease_s: float
    heartbeat_s: float
    lost_cap: int
    agent_timeout_s: float
    kill_grace_s: float
    inline_output_max_bytes: int
    sweep_interval_s: float


class SessionOut(BaseModel):
    version: str
    settings: SettingsOut
    principal: PrincipalOut


# --- jobs ------------------------------------------------------------------------------------
class SubmitIn(BaseModel):
    spec: dict[str, Any] = Field(
        description="A job spec as in a spec file (command, env, inputs, resources, array, …)"
    )
    input_sha256: Sha256 | None = Field(
        default=None, description="The input archive, uploaded before with PUT /api/v1/inputs"
    )
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Submitting again with the same key (per user) returns the first ids",
    )


class IdsOut(BaseModel):
    ids: list[int]


class IdsIn(BaseModel):
    ids: list[JobId] = Field(max_length=MAX_IDS)


class CountsIn(BaseModel):
    ids: list[JobId] | None = Field(default=None, max_length=MAX_IDS)


class CountsOut(BaseModel):
    counts: dict[JobState, int]


class JobOut(Record):
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
    tags: list[str]
    owner: str
    current_attempt: int | None
    cancel_requested: bool
    not_before: float


class AttemptOut(Record):
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
    workdir: str
    has_output: bool


class JobViewOut(BaseModel):
    job: JobOut
    spec: JobSpec
    input_sha256: str | None
    attempts: list[AttemptOut]


class EventOut(Record):
    id: int
    ts: float
    job_id: int | None
    attempt_id: int | None
    agent_id: int | None
    kind: str
    from_state: str
    to_state: str
    detail: str


class OutputRefOut(Record):
    attempt_id: int
    job_id: int
    size: int
    sha256: str
    inline: bool = Field(description="Stored in the store itself rather than the sandbox")


# --- agents ----------------------------------------------------------------------------------
class AgentOut(Record):
    id: int
    name: str
    host: str
    pool: str
    state: str
    cpus: float
    memory_bytes: int
    gpus: int
    labels: list[str]
    started_at: float
    last_seen: float
    drain: bool
    running: int
    pid: int
    instance_id: int | None = None
    idle_since: float | None = None


class InstanceOut(Record):
    id: int
    pool: str
    provider: str
    provider_id: str
    state: InstanceState
    cost_per_hour: float
    created_at: float
    launched_at: float | None
    ready_at: float | None
    ended_at: float | None
    agent_id: int | None
    reason: str


class JoinIn(BaseModel):
    name: str = Field(min_length=1, max_length=256)
    host: str = Field(max_length=256)
    cpus: float = Field(gt=0)
    memory_bytes: Size
    gpus: Count = 0
    labels: list[str] = Field(default_factory=list, max_length=256)
    pid: Count = 0
    pool: str = Field(default="", max_length=256, description="Only for admin tokens")


class JoinOut(BaseModel):
    agent_id: int
    pool: str
    token: str = Field(description="The agent token; shown once")


class CapacityIn(BaseModel):
    cpus: float = Field(ge=0)
    memory_bytes: Size
    gpus: Count = 0
    labels: list[str] = Field(default_factory=list, max_length=256)


class ClaimIn(BaseModel):
    capacity: CapacityIn = Field(description="What all claimed jobs together may use")
    per_job: CapacityIn | None = Field(
        default=None, description="The most one job may need (default: `capacity`)"
    )
    limit: int = Field(ge=0, le=1000)
    lease_s: float = Field(gt=0, le=86_400)
    workdir_root: str = Field(default="", max_length=4096)
    wait_s: float = Field(
        default=0.0, ge=0, le=25.0, description="Long-poll: wait this long for work"
    )


class ClaimOut(Record):
    attempt_id: int
    job_id: int
    spec: JobSpec
    array_index: int | None
    input_sha256: str | None
    lease_until: float


class ClaimsOut(BaseModel):
    claims: list[ClaimOut]


# How an agent may say an attempt ended (`lost` is the sweeper's verdict, never reported).
ReportedState = Literal[
    AttemptState.SUCCEEDED, AttemptState.FAILED, AttemptState.TIMED_OUT, AttemptState.CANCELLED
]


class OutcomeIn(BaseModel):
    attempt_id: Id
    state: ReportedState
    exit_code: Int32 | None = None
    reason: str = Field(default="", max_length=4096)
    user_error: bool = False
    output_key: str | None = Field(default=None, max_length=1024)
    output_inline: Base64Bytes | None = Field(default=None, description="base64")
    output_size: Size = 0
    output_sha256: str = ""


class FinishIn(BaseModel):
    outcomes: list[OutcomeIn] = Field(max_length=10_000)
    then: ClaimIn | None = None


class FinishOut(BaseModel):
    refused: list[int]
    claims: list[ClaimOut]


class HeartbeatIn(BaseModel):
    attempt_ids: list[Id] = Field(max_length=10_000)
    lease_s: float = Field(gt=0, le=86_400)


class HeartbeatOut(BaseModel):
    renewed: list[int]
    cancel: list[int]
    drain: bool
    lease_until: float


class DrainIn(BaseModel):
    drain: bool = True


class WaitOut(BaseModel):
    rang: bool = Field(description="Work may be claimable now")


# --- sandboxes and tokens --------------------------------------------------------------------
class BlobOut(Record):
    key: str
    size: int
    sha256: str


class TokenIn(BaseModel):
    id: str = Field(pattern=r"^[0-9a-f]{16}$")
    role: Role
    name: str = Field(min_length=1, max_length=256)
    pool: str = Field(default="", max_length=256)
    created_at: float = 0.0
    expires_at: float | None = None
    secret_sha256: Sha256


class TokenOut(Record):
    id: str
    role: Role
    name: str
    pool: str
    created_at: float
    expires_at: float | None
    revoked: bool
    used_at: float | None


class RevokedOut(BaseModel):
    revoked: bool


LogStream = Literal["stdout", "stderr"]


class LogTailIn(BaseModel):
    attempt_id: Id
    stream: LogStream
    offset: Size = Field(description="where `data` starts in the stream")
    data: Base64Bytes = Field(description="base64")


class LogsIn(BaseModel):
    tails: list[LogTailIn] = Field(max_length=10_000)


class LogTailOut(BaseModel):
    attempt_id: int
    stream: LogStream
    offset: int = Field(description="where `data` starts in the stream")
    data: str = Field(description="base64")
