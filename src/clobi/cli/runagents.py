"""The local agents `clobi run` starts for its session, and stops when it is done.

They are instances of the session's `local` pool, started by the `local` provider like any
the resource manager starts (`clobi instances --all` lists them): agent processes on this
machine, each offering its share of the cpus and memory, logging to
`<session>/manager/local/<instance>.log`. Stopping sends SIGTERM (the agent drains: it takes
no new jobs and finishes the ones it runs), waits, then kills any that are left with
everything they started.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from clobi.errors import ClobiError

if TYPE_CHECKING:
    from clobi.manager.providers.local import LocalProvider
    from clobi.model.instances import InstanceRecord
    from clobi.store.base import Store

LOG_TAIL_LINES = 10
POOL = "local"


def machine_cpus() -> int:
    """The cpus this process may use (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_memory() -> int:
    """Bytes of memory on this machine."""
    from clobi.agent.process import free_capacity_of_machine

    return free_capacity_of_machine()[1]


def agent_shares(machine: int, job_cpus: float, count: int | None) -> tuple[int, float]:
    """How many local agents to start and the cpus each offers.

    One agent process per job slot by default: a single agent's loop is one Python process,
    so spreading slots over processes keeps every core busy with short jobs. Each agent offers
    at least one job's worth of cpus, so no job is left unrunnable.
    """
    if count is None:
        count = max(1, min(machine, int(machine // max(job_cpus, 1e-9))))
    return count, max(job_cpus, machine / count)


class LocalAgents:
    """`count` agent processes serving the session in `root`, each offering `cpus`."""

    def __init__(self, root: Path, count: int, cpus: float) -> None:
        self.root = root
        self.count = count
        self.cpus = cpus
        self.store: Store | None = None
        self.provider: LocalProvider | None = None
        self.instances: list[InstanceRecord] = []
        self.ids: dict[int, str] = {}  # instance id -> provider id
        self.logs: list[Path] = []
        self.killed = False

    def __enter__(self) -> LocalAgents:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop(timeout_s=30.0)

    def start(self) -> None:
        from clobi.manager.loop import join_info, record_launch
        from clobi.manager.providers.local import LocalProvider
        from clobi.model.instances import InstanceState
        from clobi.model.pools import PoolSpec
        from clobi.session import load_session

        session = load_session(self.root)
        self.store = store = session.open_store()
        memory = machine_memory() // self.count  # split, so K agents do not each offer all
        pool = PoolSpec(POOL, "local", cpus=self.cpus, memory_bytes=memory, max=self.count)
        self.provider = LocalProvider(pool, join_info(session, store, None))
        self.instances = [
            store.create_instance(POOL, "local", 0.0, f"clobi run (pid {os.getpid()})")
            for _ in range(self.count)
        ]
        from clobi.manager.providers.base import LaunchRequest

        launched = self.provider.launch([LaunchRequest(i.id, "") for i in self.instances])
        for answer in launched:
            if answer.error:
                store.set_instance(answer.instance_id, InstanceState.FAILED, answer.error)
                raise ClobiError(f"clobi run: cannot start a local agent: {answer.error}")
            record_launch(store, answer.instance_id, answer.provider_id)
            self.ids[answer.instance_id] = answer.provider_id
            self.logs.append(self.provider.log_path(answer.instance_id))

    def _alive(self) -> list[str]:
        from clobi.manager.plan import ProviderState

        assert self.provider is not None
        states = self.provider.describe(list(self.ids.values()))
        return [pid for pid, state in states.items() if state is ProviderState.RUNNING]

    def check(self) -> None:
        """Raise when every agent has exited: nothing would run the remaining jobs."""
        if self.ids and not self._alive():
            raise ClobiError(
                f"the run's agents exited early; the end of {self.logs[0]}:\n{self.log_tail(0)}"
            )

    def log_tail(self, n: int) -> str:
        try:
            lines = self.logs[n].read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return "  (no log)"
        return "\n".join(f"  {line}" for line in lines[-LOG_TAIL_LINES:]) or "  (empty log)"

    def stop(self, timeout_s: float) -> list[int]:
        """Drain every agent; kill those still alive after `timeout_s`. Returns one code per
        agent: 0 when it drained and exited, -9 when it had to be killed."""
        if self.provider is None:
            return []
        self.provider.stop_gently(list(self.ids.values()))
        deadline = time.monotonic() + timeout_s
        left = self._alive()
        try:
            while left and time.monotonic() < deadline:
                time.sleep(0.02)
                left = self._alive()
        except KeyboardInterrupt:  # a second Ctrl-C: do not wait for the drain
            left = self._alive()
        if left:
            self.provider.terminate(left)
        self._record_end(set(left))
        return [-9 if pid in left else 0 for pid in self.ids.values()]

    def _record_end(self, killed: set[str]) -> None:
        from clobi.model.instances import InstanceState

        assert self.store is not None
        for instance_id, pid in self.ids.items():
            why = "killed after the run" if pid in killed else "the run is over"
            self.store.set_instance(instance_id, InstanceState.TERMINATED, why)
        self.store.close()
        self.store, self.provider = None, None

    def remove_logs(self) -> None:
        for log in self.logs:
            log.unlink(missing_ok=True)
