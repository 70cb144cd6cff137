"""The `simulated` provider: a cloud on this computer, for tests and demos.

Each machine is an agent process, as with `local`, but it behaves like a cloud instance:
- it boots: pending for `boot_delay`, then its agent starts and joins on its own (a detached
  `simboot` process sleeps, then execs the agent; nothing waits on the manager);
- the cloud has a `quota` of live machines and refuses launches over it;
- a launch fails with probability `failure_rate` (drawn from `seed`, for repeatable runs);
- it can be preempted: `preempt(ids)`, or from any process `request_preemption(...)` (which
  touches `<session>/manager/simulated/<pool>/preempt/<provider_id>`); the machine then reports
  preempting for `preempt_notice` and is killed at the first call after the notice ends;
- every machine's launch and end are kept, and `cost(now)` bills them at the pool's rate.

```toml
[pools.cloud]
provider = "simulated"
cost_per_hour = 0.10
boot_delay = "5s"       # default 5s
quota = 4               # default: none
failure_rate = 0.1      # default 0
seed = 42               # default: random
preempt_notice = "2s"   # default 2s
```

Files, under `<session>/manager/simulated/<pool>/`: `state.json` (machines and their history),
`<instance_id>.log` (each agent's output), `preempt/` (preemption requests).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from clobi.errors import ConfigError
from clobi.manager.plan import ProviderState
from clobi.manager.providers import localproc
from clobi.manager.providers.base import JoinInfo, Launched, LaunchRequest, Provider
from clobi.manager.providers.local import check_python
from clobi.manager.providers.localproc import Book, Machine, StateFile
from clobi.model.pools import PoolSpec
from clobi.model.units import parse_duration_s

BOOT_MODULE = "clobi.manager.providers.simboot"
_BOOTING_MARK = BOOT_MODULE.encode()


@dataclass(frozen=True)
class SimulatedSettings:
    """The simulated cloud's behaviour, from the pool's settings."""

    boot_delay_s: float = 5.0
    quota: int | None = None  # most live machines at once; None: no limit
    failure_rate: float = 0.0
    seed: int | None = None
    preempt_notice_s: float = 2.0


@dataclass(frozen=True)
class Usage:
    """One machine's time on the bill: from launch to its end (None while it lives)."""

    provider_id: str
    instance_id: int
    launched_at: float
    ended_at: float | None = None
    reason: str = ""  # why it ended: terminated, preempted, exited

    def hours(self, now: float) -> float:
        end = now if self.ended_at is None else min(self.ended_at, now)
        return max(0.0, end - self.launched_at) / 3600.0


def _duration(value: object) -> float:
    return parse_duration_s(value)


def _quota(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("must be a whole number of machines, 0 or more")
    return value


def _rate(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a probability from 0 to 1, e.g. 0.1")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"must be from 0 to 1, not {value}")
    return float(value)


def _seed(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be a whole number")
    return value


_PARSERS: dict[str, tuple[str, Callable[[object], Any]]] = {
    "boot_delay": ("boot_delay_s", _duration),
    "quota": ("quota", _quota),
    "failure_rate": ("failure_rate", _rate),
    "seed": ("seed", _seed),
    "preempt_notice": ("preempt_notice_s", _duration),
}


def parse_settings(settings: Mapping[str, Any]) -> tuple[SimulatedSettings, list[str]]:
    """The simulator's settings and the problems with them ("key: message"); unknown keys
    are left to `check_settings`."""
    values: dict[str, Any] = {}
    problems = []
    for key, (name, parse) in _PARSERS.items():
        if key in settings:
            try:
                values[name] = parse(settings[key])
            except ValueError as exc:
                problems.append(f"{key}: {exc}")
    return SimulatedSettings(**values), problems


def pool_directory(session_root: Path, pool: str) -> Path:
    return session_root / "manager" / "simulated" / pool


def request_preemption(session_root: Path, pool: str, provider_id: str) -> None:
    """Ask the simulated cloud to preempt a machine, from any process: the pool's provider
    picks the request up at its next call, and the notice starts then."""
    if "/" in provider_id or provider_id.startswith("."):
        raise ValueError(f"not a provider id: {provider_id!r}")
    folder = pool_directory(session_root, pool) / "preempt"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / provider_id).touch()


class SimulatedProvider(Provider):
    """Agents as local processes that boot, fail, run out of quota and get preempted like
    cloud instances. `clock` gives the time (wall-clock seconds) for billing and notices."""

    name: ClassVar[str] = "simulated"
    settings_keys: ClassVar[frozenset[str]] = frozenset({*_PARSERS, "python"})

    def __init__(
        self, pool: PoolSpec, join: JoinInfo, *, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(pool, join)
        problems = self.check_settings(pool.settings)
        if problems:
            raise ConfigError([f"pools.{pool.name}.{p}" for p in problems])
        self.settings, _ = parse_settings(pool.settings)
        self.clock = clock
        self.directory = pool_directory(join.session_root, pool.name)
        self.state = StateFile(self.directory / "state.json")
        self.python = localproc.resolve_python(pool, join)
        self._random = random.Random(self.settings.seed)

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> list[str]:
        problems = super().check_settings(settings)
        return problems + parse_settings(settings)[1] + check_python(settings)

    @staticmethod
    def provider_id(instance_id: int) -> str:
        return f"sim-{instance_id}"

    def log_path(self, instance_id: int) -> Path:
        """Where the agent of the instance writes its output."""
        return self.directory / f"{instance_id}.log"

    # --- the contract ------------------------------------------------------------------------

    def launch(self, requests: Sequence[LaunchRequest]) -> list[Launched]:
        """Boot one machine per request, unless over quota or (by chance) failing. A request
        for an instance that is still live starts nothing."""
        with self.state.edit() as book:
            now = self.clock()
            self._advance(book, now)
            return [self._launch(book, request, now) for request in requests]

    def describe(self, provider_ids: Sequence[str]) -> dict[str, ProviderState]:
        """Pending while booting, running, preempting during a preemption notice, gone once
        terminated, preempted or exited (and for ids this pool never had)."""
        with self.state.edit() as book:
            self._advance(book, self.clock())
            return {pid: self._state_of(book.machines.get(pid)) for pid in provider_ids}

    def terminate(self, provider_ids: Sequence[str]) -> None:
        """SIGKILL each machine with every process it started."""
        with self.state.edit() as book:
            now = self.clock()
            self._advance(book, now)
            for pid in provider_ids:
                if pid in book.machines:
                    localproc.kill_tree(book.machines[pid])
                    _end(book, pid, now, "terminated")

    # --- the simulator's own ---------------------------------------------------------------

    def preempt(self, provider_ids: Sequence[str]) -> None:
        """Give notice to the given live machines: they report preempting for
        `preempt_notice`, then are killed."""
        with self.state.edit() as book:
            now = self.clock()
            self._advance(book, now)
            for pid in provider_ids:
                machine = book.machines.get(pid)
                if machine is not None and machine.preempted_at is None:
                    machine.preempted_at = now

    def usage(self) -> list[Usage]:
        """Every machine this pool launched, oldest first, with its end once it ended."""
        with self.state.edit() as book:
            self._advance(book, self.clock())
            ended = [Usage(**u) for u in book.extra.get("ended", [])]
            live = [Usage(pid, m.instance_id, m.launched_at) for pid, m in book.machines.items()]
        return sorted(ended + live, key=lambda u: (u.launched_at, u.instance_id))

    def cost(self, now: float | None = None) -> float:
        """What the pool's machines have cost up to `now` (default: the clock) at its rate."""
        at = self.clock() if now is None else now
        return sum(u.hours(at) for u in self.usage()) * self.pool.cost_per_hour

    def preempt_trigger(self, provider_id: str) -> Path:
        """The file whose creation (by any process) preempts the machine."""
        return self.directory / "preempt" / provider_id

    # --- internals ---------------------------------------------------------------------------

    def _launch(self, book: Book, request: LaunchRequest, now: float) -> Launched:
        iid, pid = request.instance_id, self.provider_id(request.instance_id)
        if pid in book.machines:
            return Launched(iid, provider_id=pid)
        quota = self.settings.quota
        if quota is not None and len(book.machines) >= quota:
            return Launched(iid, error=f"quota exceeded ({quota})")
        if self._random.random() < self.settings.failure_rate:
            return Launched(iid, error="launch failed (simulated failure)")
        argv, env = localproc.agent_command(
            self.pool, self.join, iid, request.bootstrap, self.python
        )
        boot = [self.python, "-m", BOOT_MODULE, repr(self.settings.boot_delay_s), "--", *argv]
        try:
            process, start = localproc.spawn_detached(boot, env, self.log_path(iid))
        except OSError as exc:
            return Launched(iid, error=f"cannot start a machine: {exc}")
        book.machines[pid] = Machine(iid, process, start, launched_at=now)
        return Launched(iid, provider_id=pid)

    def _advance(self, book: Book, now: float) -> None:
        """Bring the book up to `now`: take preemption requests, reclaim machines whose notice
        is over, and record the machines whose process ended."""
        self._take_preemption_requests(book, now)
        notice = self.settings.preempt_notice_s
        for pid, machine in list(book.machines.items()):
            if machine.preempted_at is not None and now >= machine.preempted_at + notice:
                localproc.kill_tree(machine)
                _end(book, pid, machine.preempted_at + notice, "preempted")
            elif not machine.alive():
                _end(book, pid, now, "exited")

    def _take_preemption_requests(self, book: Book, now: float) -> None:
        folder = self.directory / "preempt"
        try:
            requests = list(folder.iterdir())
        except FileNotFoundError:
            return
        for path in requests:
            machine = book.machines.get(path.name)
            if machine is not None and machine.preempted_at is None:
                machine.preempted_at = now
            path.unlink(missing_ok=True)

    @staticmethod
    def _state_of(machine: Machine | None) -> ProviderState:
        if machine is None:
            return ProviderState.GONE
        if machine.preempted_at is not None:
            return ProviderState.PREEMPTING
        if _BOOTING_MARK in machine.cmdline():
            return ProviderState.PENDING
        return ProviderState.RUNNING


def _end(book: Book, provider_id: str, when: float, reason: str) -> None:
    machine = book.machines.pop(provider_id)
    ended = book.extra.setdefault("ended", [])
    ended.append(
        {
            "provider_id": provider_id,
            "instance_id": machine.instance_id,
            "launched_at": machine.launched_at,
            "ended_at": when,
            "reason": reason,
        }
    )
