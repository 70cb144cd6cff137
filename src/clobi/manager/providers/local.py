"""The `local` provider: each machine is one agent process on this computer.

The embedded session's default pool. An agent runs detached in its own session, its output in
`<session>/manager/local/<instance_id>.log`; the pool's state file
`<session>/manager/local/<pool>.json` records each agent's pid and start time, so a restarted
manager still describes and terminates the agents an earlier one started.

Settings: `python` (the interpreter that runs the agents; default: the manager's).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from clobi.manager.plan import ProviderState
from clobi.manager.providers import localproc
from clobi.manager.providers.base import JoinInfo, Launched, LaunchRequest, Provider
from clobi.manager.providers.localproc import Book, Machine, StateFile
from clobi.model.pools import PoolSpec


class LocalProvider(Provider):
    """Agents as processes of this computer: running while the process lives, gone after."""

    name: ClassVar[str] = "local"
    settings_keys: ClassVar[frozenset[str]] = frozenset({"python"})

    def __init__(self, pool: PoolSpec, join: JoinInfo) -> None:
        super().__init__(pool, join)
        self.directory = join.session_root / "manager" / "local"
        self.state = StateFile(self.directory / f"{pool.name}.json")
        self.python = localproc.resolve_python(pool, join)

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> list[str]:
        problems = super().check_settings(settings)
        return problems + check_python(settings)

    @staticmethod
    def provider_id(instance_id: int) -> str:
        return f"local-{instance_id}"

    def log_path(self, instance_id: int) -> Path:
        """Where the agent of the instance writes its output."""
        return self.directory / f"{instance_id}.log"

    def launch(self, requests: Sequence[LaunchRequest]) -> list[Launched]:
        """Start one agent per request. A request for an instance whose agent still runs
        (a manager that crashed before recording the launch asks again) starts nothing."""
        with self.state.edit() as book:
            forget_dead(book)
            return [self._launch(book, request) for request in requests]

    def _launch(self, book: Book, request: LaunchRequest) -> Launched:
        pid = self.provider_id(request.instance_id)
        if pid in book.machines:
            return Launched(request.instance_id, provider_id=pid)
        argv, env = localproc.agent_command(
            self.pool, self.join, request.instance_id, request.bootstrap, self.python
        )
        try:
            process, start = localproc.spawn_detached(argv, env, self.log_path(request.instance_id))
        except OSError as exc:
            return Launched(request.instance_id, error=f"cannot start an agent: {exc}")
        book.machines[pid] = Machine(request.instance_id, process, start, launched_at=time.time())
        return Launched(request.instance_id, provider_id=pid)

    def describe(self, provider_ids: Sequence[str]) -> dict[str, ProviderState]:
        """Running while the agent process we started lives, gone otherwise."""
        with self.state.edit() as book:
            forget_dead(book)
            return {
                pid: ProviderState.RUNNING if pid in book.machines else ProviderState.GONE
                for pid in provider_ids
            }

    def stop_gently(self, provider_ids: Sequence[str]) -> None:
        """SIGTERM each agent: it drains (takes no new job, finishes its jobs) and exits."""
        with self.state.edit() as book:
            for pid in provider_ids:
                machine = book.machines.get(pid)
                if machine is not None:
                    localproc.signal_machine(machine, signal.SIGTERM)

    def terminate(self, provider_ids: Sequence[str]) -> None:
        """SIGKILL each agent with every process it started (jobs included)."""
        with self.state.edit() as book:
            for pid in provider_ids:
                machine = book.machines.pop(pid, None)
                if machine is not None:
                    localproc.kill_tree(machine)


def forget_dead(book: Book) -> None:
    """Drop the machines whose process has ended."""
    for pid in [pid for pid, m in book.machines.items() if not m.alive()]:
        del book.machines[pid]


def check_python(settings: Mapping[str, Any]) -> list[str]:
    python = settings.get("python")
    if python is None or (isinstance(python, str) and python.strip()):
        return []
    return ["python: must be the path of a Python interpreter, e.g. /usr/bin/python3"]
