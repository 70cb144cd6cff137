"""Agents as local processes, for the providers whose machines are processes of this computer
(`local`, `simulated`): start them detached, know them again after a restart, stop them with
everything they started.

A process is known by its pid *and* its start time (field 22 of `/proc/<pid>/stat`, clock ticks
since boot), so a recycled pid is never mistaken for it, and the boot id guards against a
reboot. Each machine leads its own session (setsid): it survives the manager, and a terminal's
hangup does not reach it. Its jobs lead sessions of their own, so stopping a machine walks its
process tree instead of signalling one group: every descendant is stopped first (a stopped
process cannot fork or exit), then all are killed. The agent is a child subreaper, so processes
that escaped their jobs' groups are still its descendants.

Which machines a pool has is a small JSON file per pool, read and rewritten under a lock, and
replaced atomically, so a crash never leaves half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from clobi.errors import ProviderError
from clobi.manager.providers.base import JoinInfo
from clobi.model.pools import PoolSpec

TOKEN_VAR = "CLOBI_TOKEN"
STATE_VERSION = 1
# Rounds of "find descendants, stop the new ones" before killing (forks in flight race us).
_MAX_STOP_ROUNDS = 16
# How long `kill_tree` waits to reap a killed child of this process before leaving it for later.
_REAP_WAIT_S = 1.0
_SIGNALS_TO_DEFAULT = frozenset(signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP})


@dataclass(frozen=True)
class Stat:
    """What `/proc/<pid>/stat` says of a process."""

    state: str  # R, S, D, T, Z, …
    ppid: int
    start_ticks: int

    @property
    def dead(self) -> bool:
        return self.state in ("Z", "X", "x")


def read_stat(pid: int) -> Stat | None:
    """The process's stat, or None when no process has the pid."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = text.rpartition(")")[2].split()
    try:
        return Stat(state=rest[0], ppid=int(rest[1]), start_ticks=int(rest[19]))
    except (IndexError, ValueError):
        return None


@dataclass
class Machine:
    """One process-machine of a pool: which process it is, when it started and, for the
    simulator, when it was told it would be preempted."""

    instance_id: int
    pid: int
    start_ticks: int
    launched_at: float
    preempted_at: float | None = None

    def alive(self) -> bool:
        """True while the very process we started (same pid, same start) runs. A dead child of
        this process is reaped on the way."""
        stat = read_stat(self.pid)
        if stat is None or stat.start_ticks != self.start_ticks:
            return False
        if stat.dead:
            reap(self.pid)
            return False
        return True

    def cmdline(self) -> bytes:
        """Its argv, NUL-separated (empty when it is gone)."""
        try:
            with open(f"/proc/{self.pid}/cmdline", "rb") as f:
                return f.read()
        except OSError:
            return b""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Machine:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Book:
    """A pool's state file, as read: its live machines by provider id and whatever else the
    provider keeps (`extra`, e.g. the simulator's ended instances)."""

    machines: dict[str, Machine] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class StateFile:
    """A pool's JSON state file. `edit()` holds an exclusive lock while the caller changes the
    book, then replaces the file atomically if anything changed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def edit(self) -> Iterator[Book]:
        with self._locked():
            before = self._read_text()
            book = self._parse(before)
            yield book
            after = _dump(book)
            if after != before:
                self._write(after)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            lock = open(lock_path, "a", encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise ProviderError(f"cannot use the provider's state file: {exc}") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _read_text(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ""
        except OSError as exc:
            raise ProviderError(f"cannot read the provider's state file: {exc}") from None

    def _parse(self, text: str) -> Book:
        try:
            return _parse(text)
        except (ValueError, TypeError, AttributeError) as exc:
            raise ProviderError(f"{self.path}: not a provider state file ({exc})") from None

    def _write(self, text: str) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, text.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:
            raise ProviderError(f"cannot write the provider's state file: {exc}") from None


def _parse(text: str) -> Book:
    if not text:
        return Book()
    data = json.loads(text)
    if data.get("boot_id") != boot_id():
        # This computer rebooted since: none of those processes exists anymore.
        data["machines"] = {}
    machines = {k: Machine.from_json(v) for k, v in data.get("machines", {}).items()}
    extra = {k: v for k, v in data.items() if k not in ("version", "boot_id", "machines")}
    return Book(machines, extra)


def _dump(book: Book) -> str:
    data = {
        "version": STATE_VERSION,
        "boot_id": boot_id(),
        "machines": {k: asdict(m) for k, m in sorted(book.machines.items())},
        **book.extra,
    }
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


# --- starting ------------------------------------------------------------------------------


def agent_command(
    pool: PoolSpec, join: JoinInfo, instance_id: int, bootstrap: str, python: str
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of the agent of one machine of the pool. The bootstrap token
    travels only in the environment, and only when it is needed (joining a server)."""
    argv = [python, "-m", "clobi", "agent", "--cpus", str(pool.cpus)]
    argv += ["--memory", str(pool.memory_bytes), "--gpus", str(pool.gpus)]
    if pool.labels:
        argv += ["--labels", ",".join(sorted(pool.labels))]
    argv += ["--name", f"{pool.name}-{instance_id}"]
    env = {k: v for k, v in os.environ.items() if k != TOKEN_VAR}
    if join.url is None:
        argv += ["--session", str(join.session_root)]
        argv += ["--pool", pool.name, "--instance", str(instance_id)]
    else:
        argv += ["--join", join.url]
        env[TOKEN_VAR] = bootstrap
    return argv, env


def resolve_python(pool: PoolSpec, join: JoinInfo) -> str:
    """The interpreter to start agents with, by path (a PATH lookup may hit a slow shim)."""
    python = str(pool.settings.get("python") or join.python)
    if "/" not in python:
        python = shutil.which(python) or python
    return python


def spawn_detached(argv: list[str], env: Mapping[str, str], log: Path) -> tuple[int, int]:
    """Start `argv` in a new session, stdin from /dev/null, stdout and stderr appended to `log`;
    its pid and start time. Raises OSError when it cannot be started."""
    log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    pid = os.posix_spawn(
        argv[0],
        argv,
        env,
        file_actions=actions,
        setsid=True,
        setsigmask=(),
        setsigdef=_SIGNALS_TO_DEFAULT,
    )
    # Our child keeps its /proc entry (at worst as a zombie) until we reap it.
    stat = read_stat(pid)
    if stat is None:  # pragma: no cover - only if something else reaped our child
        raise OSError(f"process {pid} vanished as it started")
    return pid, stat.start_ticks


# --- stopping ------------------------------------------------------------------------------


def kill_tree(machine: Machine) -> None:
    """SIGKILL the machine's process and all its descendants, wherever their sessions are.
    A machine that is already gone is fine."""
    if not _signal_if_same(machine, signal.SIGSTOP):
        return
    stopped = _stop_descendants(machine.pid)
    _kill_quietly(machine.pid, signal.SIGKILL, group=True)
    for pid in stopped:
        _kill_quietly(pid, signal.SIGKILL)
    deadline = time.monotonic() + _REAP_WAIT_S
    while machine.alive() and time.monotonic() < deadline:
        time.sleep(0.005)


def signal_machine(machine: Machine, sig: int) -> bool:
    """Send `sig` to the machine's process if it is still the one we started (False: gone)."""
    return _signal_if_same(machine, sig)


def _signal_if_same(machine: Machine, sig: int) -> bool:
    """Signal the machine's process if it is still the one we started; False when gone.
    A pidfd pins the process, so a pid recycled between check and signal is never hit."""
    try:
        pidfd = os.pidfd_open(machine.pid)
    except ProcessLookupError:
        return False
    except OSError:  # pragma: no cover - kernels before 5.3
        if not machine.alive():
            return False
        _kill_quietly(machine.pid, sig)
        return True
    try:
        if not machine.alive():
            return False
        signal.pidfd_send_signal(pidfd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)


def _stop_descendants(root: int) -> set[int]:
    """SIGSTOP every descendant of the (stopped) root until no new one shows up."""
    stopped: set[int] = set()
    for _ in range(_MAX_STOP_ROUNDS):
        new = descendants(root) - stopped
        if not new:
            break
        for pid in new:
            _kill_quietly(pid, signal.SIGSTOP)
        stopped |= new
    return stopped


def descendants(root: int) -> set[int]:
    """Pids of the live processes below `root` in the process tree."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = read_stat(int(name))
            if stat is not None and not stat.dead:
                children.setdefault(stat.ppid, []).append(int(name))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _kill_quietly(pid: int, sig: int, group: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def reap(pid: int) -> None:
    """Collect a dead child of this process (another's dead child is its parent's business)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
