"""What the console reads from and does to a session, as blocking calls.

The console calls these from worker threads only (store calls block; the UI thread must not).
One lock serialises them, so a refresh and a user's action never share the store at once and
`close` waits for whatever is in flight.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from clobi.errors import ConfigError
from clobi.manager import control
from clobi.manager.config import change_pool, read_pools, scale
from clobi.model.instances import InstanceRecord
from clobi.model.records import AgentRecord, Event
from clobi.model.states import JobState
from clobi.session import CONFIG_NAME, Session
from clobi.store.base import Store

DECISIONS_KEPT = 200
EVENTS_PAGE = 10_000
WHO = "by user (clobi top)"


@dataclass(frozen=True)
class Target:
    """What a key acts on: a whole pool, or one instance of it."""

    pool: str
    instance_id: int | None = None

    def describe(self) -> str:
        if self.instance_id is None:
            return f"pool {self.pool}"
        return f"instance {self.instance_id} of pool {self.pool}"


@dataclass(frozen=True)
class Snapshot:
    """The session as of one refresh; what could not be read is in `problems`."""

    taken_at: float
    queued_by_priority: tuple[tuple[int, int], ...]  # (priority, claimable jobs), highest first
    states: Mapping[JobState, int]
    pools: tuple[control.PoolStatus, ...]
    strays: tuple[AgentRecord, ...]  # live agents of no declared pool
    decisions: tuple[Event, ...]  # the manager's, newest first
    problems: tuple[str, ...] = ()


class Backend:
    """A session's store and clobi.toml, read and changed on behalf of the console."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.config_path: Path = session.root / CONFIG_NAME
        self._store: Store | None = None
        self._lock = threading.Lock()
        self._after_id = 0  # the newest event seen: later refreshes read only what is new
        self._decisions: deque[Event] = deque(maxlen=DECISIONS_KEPT)

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def _open(self) -> Store:
        if self._store is None:
            self._store = self.session.open_store()
        return self._store

    # --- reading ---------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """Everything the console shows; a bad clobi.toml still lets the queue show."""
        with self._lock:
            store = self._open()
            now = time.time()
            problems: list[str] = []
            try:
                declared = read_pools(self.config_path).pools
            except ConfigError as exc:
                listed = "".join(f"\n  {p}" for p in exc.problems)
                problems.append(f"{exc.source}: not valid, pools not shown:{listed}")
                declared = ()
            pools = control.pool_statuses(store, declared, now)
            known = {p.pool.name for p in pools}
            strays = tuple(a for a in store.list_agents() if a.pool not in known)
            return Snapshot(
                taken_at=now,
                queued_by_priority=self._queue(store),
                states=store.count_states(),
                pools=tuple(pools),
                strays=strays,
                decisions=self._new_decisions(store),
                problems=tuple(problems),
            )

    @staticmethod
    def _queue(store: Store) -> tuple[tuple[int, int], ...]:
        counts: dict[int, int] = {}
        for c in store.queued_demand():
            counts[c.priority] = counts.get(c.priority, 0) + c.count
        return tuple(sorted(counts.items(), reverse=True))

    def _new_decisions(self, store: Store) -> tuple[Event, ...]:
        while True:
            page = store.events(after_id=self._after_id, limit=EVENTS_PAGE)
            if not page:
                break
            self._after_id = page[-1].id
            self._decisions.extend(e for e in page if e.kind.startswith("manager_"))
            if len(page) < EVENTS_PAGE:
                break
        return tuple(reversed(self._decisions))

    # --- acting ----------------------------------------------------------------------------
    def change_max(self, pool: str, delta: int) -> str:
        """Raise or lower the pool's max by `delta` (written to clobi.toml)."""
        with self._lock:
            current = read_pools(self.config_path).pool(pool)
            if current.max + delta < 0:
                return f"pool {pool}: max is already 0"
            new = change_pool(self.config_path, pool, lambda p: scale(p, None, p.max + delta))
        return f"pool {pool}: max {new.max}, min {new.min} (written to clobi.toml)"

    def drain(self, target: Target) -> str:
        """Soft kill: the agents finish their jobs and leave, then the manager stops the
        machines. A whole pool is first scaled to 0, as `clobi pool drain` does, so that the
        manager does not start new ones."""
        with self._lock:
            chosen = self._chosen(target)
            done = control.drain(self._open(), chosen, f"drained {WHO}")
        draining = _count(len(done), "instance")
        return f"{target.describe()}: draining {draining}{self._scaled(target)}"

    def kill(self, target: Target) -> str:
        """Hard kill: the machines stop now, their running jobs are requeued."""
        with self._lock:
            chosen = self._chosen(target)
            lost_cap = self.session.settings.lost_cap
            requeued = control.hard_kill(self._open(), chosen, f"killed {WHO}", lost_cap)
        return (
            f"{target.describe()}: killing {_count(len(chosen), 'instance')}, "
            f"{_count(len(requeued), 'job')} requeued" + self._scaled(target)
        )

    def _chosen(self, target: Target) -> list[InstanceRecord]:
        read_pools(self.config_path).pool(target.pool)  # the pool must still be declared
        if target.instance_id is None:
            change_pool(self.config_path, target.pool, lambda p: scale(p, 0, 0))
        ids = () if target.instance_id is None else (target.instance_id,)
        return control.pick_instances(self._open(), target.pool, ids)

    @staticmethod
    def _scaled(target: Target) -> str:
        return "; min and max set to 0 in clobi.toml" if target.instance_id is None else ""


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"
