"""What the manager observes and what it decides: plain data, shared by the pure policy and the
loop that gathers observations and carries out decisions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from clobi.model.instances import InstanceRecord
from clobi.model.pools import ManagerSettings, PoolSpec
from clobi.model.units import format_bytes


@dataclass(frozen=True)
class Requirement:
    """A requirement class: what each queued job of the class needs of one agent."""

    cpus: float
    memory_bytes: int
    gpus: int = 0
    labels: frozenset[str] = frozenset()

    @property
    def key(self) -> str:
        """A stable name for the class, used to record verdicts (`clobi why`)."""
        labels = ",".join(sorted(self.labels))
        return f"cpus={self.cpus:g} memory={self.memory_bytes} gpus={self.gpus} labels={labels}"

    def describe(self) -> str:
        """`1 cpu, 1GiB, 1 gpu, labels ssd` for people."""
        parts = [f"{self.cpus:g} cpu{'s' if self.cpus != 1 else ''}"]
        if self.memory_bytes:
            parts.append(format_bytes(self.memory_bytes))
        if self.gpus:
            parts.append(f"{self.gpus} gpu{'s' if self.gpus > 1 else ''}")
        if self.labels:
            parts.append("labels " + ",".join(sorted(self.labels)))
        return ", ".join(parts)


@dataclass(frozen=True)
class Demand:
    """Queued jobs of one requirement class and priority that could start now."""

    requirement: Requirement
    priority: int
    queued: int


@dataclass(frozen=True)
class AgentView:
    """A live agent: what it offers, what its running jobs use, how long it has been idle."""

    agent_id: int
    pool: str
    instance_id: int | None
    cpus: float
    memory_bytes: int
    gpus: int
    labels: frozenset[str]
    used_cpus: float
    used_memory_bytes: int
    used_gpus: int
    running: int
    draining: bool
    idle_s: float  # seconds since it last had a running job (0 while busy)


class ProviderState(StrEnum):
    """What a provider says about one of its machines."""

    PENDING = "pending"  # starting
    RUNNING = "running"
    PREEMPTING = "preempting"  # the cloud will take it back soon (spot notice)
    GONE = "gone"  # terminated or never existed


@dataclass(frozen=True)
class InstanceView:
    """An instance that is not over yet, with its agent (once joined) and the provider's word."""

    record: InstanceRecord
    agent: AgentView | None = None
    provider_state: ProviderState = ProviderState.PENDING


@dataclass(frozen=True)
class Observation:
    """Everything `decide` may look at. `idle_votes` and `now` make it deterministic."""

    now: float
    pools: tuple[PoolSpec, ...]
    settings: ManagerSettings
    demand: tuple[Demand, ...]
    instances: tuple[InstanceView, ...]  # live instances of every pool
    agents: tuple[AgentView, ...]  # every live agent, with or without an instance
    idle_votes: Mapping[str, int] = field(default_factory=dict)  # per pool, carried over


class ActionKind(StrEnum):
    LAUNCH = "launch"  # ask the pool's provider for `count` instances
    DRAIN = "drain"  # let the instances' agents finish their jobs and leave, then terminate
    TERMINATE = "terminate"  # terminate instances that run no job (or never joined)


@dataclass(frozen=True)
class Action:
    """One thing to do, with the reason recorded beside it."""

    kind: ActionKind
    pool: str
    reason: str
    count: int = 0  # launch
    instance_ids: tuple[int, ...] = ()  # drain, terminate


@dataclass(frozen=True)
class Verdict:
    """Why jobs of a requirement class still wait, as of this decision."""

    requirement: Requirement
    queued: int
    text: str


@dataclass(frozen=True)
class Decision:
    """What to do now, why jobs wait, and the idle votes to carry to the next observation."""

    actions: tuple[Action, ...] = ()
    verdicts: tuple[Verdict, ...] = ()
    idle_votes: Mapping[str, int] = field(default_factory=dict)
