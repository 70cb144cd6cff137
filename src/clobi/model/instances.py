"""Instances: the machines the resource manager asked providers for. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class InstanceState(StrEnum):
    """Where an instance is in its life.

    requested → booting → running → draining → terminating → terminated; `failed` when a
    launch failed or the machine never joined. The manager records `requested` before it asks
    the provider, so a crash between the two leaves a record to clean up, never a stray machine.
    """

    REQUESTED = "requested"  # recorded; the provider has not answered yet
    BOOTING = "booting"  # the provider has it (`provider_id`); its agent has not joined yet
    RUNNING = "running"  # its agent joined and is alive
    DRAINING = "draining"  # its agent finishes its jobs, then the instance is terminated
    TERMINATING = "terminating"  # asked the provider to terminate it
    TERMINATED = "terminated"
    FAILED = "failed"

    @property
    def ended(self) -> bool:
        return self in (InstanceState.TERMINATED, InstanceState.FAILED)


LIVE_STATES = tuple(s for s in InstanceState if not s.ended)


@dataclass(frozen=True)
class InstanceRecord:
    """One instance as the store knows it."""

    id: int
    pool: str
    provider: str
    provider_id: str  # the provider's id for it ('' until launched)
    state: InstanceState
    cost_per_hour: float
    created_at: float
    launched_at: float | None
    ready_at: float | None  # when its agent joined
    ended_at: float | None
    agent_id: int | None
    reason: str  # why it is in this state

    def cost(self, now: float) -> float:
        """What it has cost so far: from launch to its end (or `now`), at its pool's rate."""
        if self.launched_at is None:
            return 0.0
        end = self.ended_at if self.ended_at is not None else now
        return max(0.0, end - self.launched_at) / 3600.0 * self.cost_per_hour


@dataclass(frozen=True)
class QueuedClass:
    """How many claimable queued jobs need these resources, at this priority."""

    cpus: float
    memory_bytes: int
    gpus: int
    labels: frozenset[str]
    priority: int
    count: int


@dataclass(frozen=True)
class AgentLoad:
    """What the running jobs of one agent use."""

    agent_id: int
    cpus: float
    memory_bytes: int
    gpus: int
    running: int
