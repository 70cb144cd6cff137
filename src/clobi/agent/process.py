"""Job processes: spawn, wait and reap them, fast; `teardown` signals them and cleans up after
them without leftovers.

Each job runs as its own process in a new session (so its process group id is its pid), in its
own work directory, with only the spec's environment plus the marker `CLOBI_ATTEMPT_ID=<id>`,
stdin from /dev/null and stdout/stderr written straight to files (pipes cost ~20 %).

Jobs may escape their process group (`setsid`, double forks). Two mechanisms find them:
the agent can become a child subreaper, so orphans reparent to it instead of to init, and every
job process carries the marker in its environment, which `/proc/<pid>/environ` shows.

Spawning, measured on the 2-core dev machines (spawn + reap `/bin/true`, 2 in flight, relative to
P = bare `os.posix_spawn`, 2,890/s): `os.posix_spawn` with setsid and the three file actions
0.91 P, plus the chdir dance below 0.88 P, plus `pidfd_open` 0.86 P;
`subprocess.Popen(start_new_session=True, cwd=...)` 0.75-0.79 P (and twice the parent CPU);
a trampoline (`env -C dir cmd` 0.50 P, `sh -c 'cd "$0" && exec "$@"'` 0.44 P). posix_spawn has
no chdir action in Python 3.11, so `spawn` briefly changes the agent's own cwd around the call.
The whole cycle (spawn, wait_any, reap, teardown.cleanup_leftovers) runs at
0.71-0.74 P, 0.74-0.80 P without the cleanup.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import signal
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from clobi.errors import ClobiError

MARKER_VAR = "CLOBI_ATTEMPT_ID"
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

# Without a pidfd, wait_any falls back to checking exits this often.
_FALLBACK_POLL_INTERVAL_S = 0.01

_OUTPUT_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC  # no O_CLOEXEC: these become fds 1 and 2
_OUTPUT_MODE = 0o666  # the umask applies, as for a shell redirection
_RESETTABLE_SIGNALS = tuple(
    sorted(signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}, key=int)
)
_SPAWN_CLOSEFROM: int | None = getattr(os, "POSIX_SPAWN_CLOSEFROM", None)  # Python >= 3.13
_EXEC_ERRNOS = frozenset({errno.ENOEXEC, errno.E2BIG, errno.ETXTBSY, errno.ELIBBAD})

_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
_CLOSE_RANGE_CLOEXEC = 4

# The working directory is process-wide state: spawns from several threads must not interleave.
_cwd_lock = threading.Lock()
_which_cache: dict[tuple[str, str], str] = {}
# Main processes of this process's jobs that are not over yet. Searches for a job's escaped
# processes skip them: reading another running job's environ costs ~50 us (it contends with
# that job's exec), more than all the rest of a cleanup.
live_mains: set[int] = set()
# Whether this process is known to be a child subreaper (None: not known yet).
_subreaper: bool | None = None


@dataclass(eq=False)
class JobProcess:
    """A running job's main process. `pgid` is `pid`: the job leads its own session."""

    pid: int
    pgid: int
    attempt_id: int
    started_monotonic: float
    pidfd: int | None = None

    @property
    def marker(self) -> bytes:
        """The environment entry that every process of this job inherits."""
        return f"{MARKER_VAR}={self.attempt_id}".encode()

    def close(self) -> None:
        """The job is over for the agent: release the pidfd and stop treating its pid as a
        job's main process. Idempotent; `teardown.cleanup_leftovers` calls it."""
        live_mains.discard(self.pid)
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


# --- spawning ---------------------------------------------------------------------------------


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | Path,
    stdout_path: str | Path,
    stderr_path: str | Path,
    attempt_id: int,
) -> JobProcess:
    """Start `argv` as a new session in `cwd` with exactly `env` plus the attempt marker (and
    PATH/HOME defaults when missing). A bare `argv[0]` is looked up on the job's PATH. Raises
    `SpawnError` when the command cannot be executed; OSError for agent-side problems such as
    a missing work directory."""
    if not argv:
        raise SpawnError("the job's command is empty")
    job_env = _job_env(env, cwd, attempt_id)
    actions = _file_actions(stdout_path, stderr_path)
    started = time.monotonic()
    pid = _spawn_in(cwd, argv, job_env, actions)
    live_mains.add(pid)
    return JobProcess(pid, pid, attempt_id, started, _open_pidfd(pid))


def _job_env(env: Mapping[str, str], cwd: str | Path, attempt_id: int) -> dict[str, str]:
    """The job's whole environment: never anything of the agent's own."""
    job_env = dict(env)
    job_env.setdefault("PATH", DEFAULT_PATH)
    if "HOME" not in job_env:
        job_env["HOME"] = _absolute(cwd)
    job_env[MARKER_VAR] = str(attempt_id)  # always ours: escaped processes are found by it
    return job_env


def _file_actions(stdout_path: str | Path, stderr_path: str | Path) -> list[tuple[Any, ...]]:
    """Open stdin/stdout/stderr in the child itself: no parent open/close round trips."""
    out, err = _absolute(stdout_path), _absolute(stderr_path)  # the cwd changes during spawn
    actions: list[tuple[Any, ...]] = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, out, _OUTPUT_FLAGS, _OUTPUT_MODE),
    ]
    if err == out:  # two opens with O_TRUNC would overwrite each other's output
        actions.append((os.POSIX_SPAWN_DUP2, 1, 2))
    else:
        actions.append((os.POSIX_SPAWN_OPEN, 2, err, _OUTPUT_FLAGS, _OUTPUT_MODE))
    if _SPAWN_CLOSEFROM is not None:
        actions.append((_SPAWN_CLOSEFROM, 3))
    return actions


def _absolute(path: str | Path) -> str:
    """`path` as an absolute string; cheap when it already is one (the usual case)."""
    text = os.fspath(path)
    return text if os.path.isabs(text) else os.path.abspath(text)


def _spawn_in(cwd: str | Path, argv: Sequence[str], env: dict[str, str], actions: list[Any]) -> int:
    """posix_spawn with the agent's cwd set to the job's for the duration of the call; the
    child inherits it. Relative executables and PATH entries resolve against `cwd`, as with
    Popen."""
    with _cwd_lock:
        home = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.chdir(cwd)
            return _spawn_resolved(argv, env, actions)
        finally:
            os.fchdir(home)
            os.close(home)


def _spawn_resolved(argv: Sequence[str], env: dict[str, str], actions: list[Any]) -> int:
    """Resolve argv[0] on the job's PATH and spawn; retry once if a cached lookup went stale."""
    key = (argv[0], env["PATH"])
    cached = key in _which_cache
    try:
        return _posix_spawn(_resolve(argv[0], env["PATH"]), argv, env, actions)
    except SpawnError:
        if not cached:
            raise
        _which_cache.pop(key, None)
        return _posix_spawn(_resolve(argv[0], env["PATH"]), argv, env, actions)


def _posix_spawn(exe: str, argv: Sequence[str], env: dict[str, str], actions: list[Any]) -> int:
    """The spawn itself, with failures of the command told apart from the agent's own."""
    _seal_descriptors()
    try:
        return os.posix_spawn(
            exe,
            list(argv),
            env,
            file_actions=actions,
            setsid=True,
            setsigdef=_signals_to_default(),
            setsigmask=(),
        )
    except ValueError as e:  # NUL bytes or '=' in names: the spec's fault
        raise SpawnError(f"cannot run {argv[0]!r}: {e}") from e
    except OSError as e:
        if e.errno in _EXEC_ERRNOS or _outputs_writable(actions):
            raise SpawnError(f"cannot run {argv[0]!r}: {e.strerror}") from e
        raise


@cache
def _signals_to_default() -> tuple[int, ...]:
    """The signals this process ignores: ignored signals survive exec, so the job gets them
    back at their defaults (exec resets caught ones by itself). Asking for just these instead
    of all ~60 saves the child as many sigaction calls (~5 % of a `/bin/true` spawn). Read
    once, from Python's view of the dispositions (which includes those inherited at start-up):
    an agent never ignores more signals later."""
    return tuple(s for s in _RESETTABLE_SIGNALS if signal.getsignal(s) == signal.SIG_IGN)


def _resolve(name: str, path_var: str) -> str:
    """`name` if it holds a slash, else its first executable match on `path_var`. Never falls
    back to the cwd as execve would for a bare name."""
    if "/" in name:
        return name
    found = _which_cache.get((name, path_var))
    if found is None:
        found = _which(name, path_var)
        if os.path.isabs(found):  # relative PATH entries depend on the job's cwd
            _which_cache[(name, path_var)] = found
    return found


def _which(name: str, path_var: str) -> str:
    """Search `path_var` like execvp; raises SpawnError naming `name` when nothing matches."""
    for directory in path_var.split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise SpawnError(f"cannot run {name!r}: not found on PATH {path_var!r}")


def _outputs_writable(actions: list[Any]) -> bool:
    """After a failed spawn: True when the output directories are fine, so the command is to
    blame (glibc reports one errno for the file actions and the exec alike)."""
    dirs = {os.path.dirname(a[2]) for a in actions if a[0] == os.POSIX_SPAWN_OPEN and a[1] > 0}
    return all(os.access(d, os.W_OK | os.X_OK) for d in dirs)


def _seal_descriptors() -> None:
    """Make every agent fd >= 3 close-on-exec so the job gets only 0, 1, 2. Python creates fds
    non-inheritable, but the agent may inherit some (seen: the shell harness leaks two) or
    make some with dup2/set_inheritable. One close_range syscall; listing them costs ~15 us."""
    if _SPAWN_CLOSEFROM is not None:
        return  # the child closes them itself
    libc = _libc()
    close_range = getattr(libc, "close_range", None) if libc is not None else None
    if close_range is not None and close_range(3, 0xFFFFFFFF, _CLOSE_RANGE_CLOEXEC) == 0:
        return
    for name in os.listdir("/proc/self/fd"):
        if int(name) > 2:
            with contextlib.suppress(OSError):  # the listing's own fd, closed by now
                os.set_inheritable(int(name), False)


def _open_pidfd(pid: int) -> int | None:
    """A pidfd to poll for the job's exit; None where the kernel lacks them (wait_any polls)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


# --- subreaper, reaping, waiting --------------------------------------------------------------


@cache
def _libc() -> Any:
    """The C library through ctypes, or None where it cannot be loaded."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    if hasattr(libc, "close_range"):
        libc.close_range.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_int]
    return libc


def become_subreaper() -> bool:
    """Make orphaned descendants of this process reparent to it rather than to init, so jobs
    that escape their group stay children of the agent. False when unavailable."""
    global _subreaper
    libc = _libc()
    one = ctypes.c_ulong(1)
    became = libc is not None and libc.prctl(_PR_SET_CHILD_SUBREAPER, one, 0, 0, 0) == 0
    _subreaper = True if became else None
    return became


def is_subreaper() -> bool:
    """True when this process is a child subreaper (asked of the kernel)."""
    libc = _libc()
    flag = ctypes.c_int(0)
    if libc is None or libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) != 0:
        return False
    return flag.value != 0


def known_subreaper() -> bool:
    """`is_subreaper`, remembered once true: only this process could undo it, and it never
    does. Saves a ctypes call per finished job."""
    global _subreaper
    if _subreaper is None and is_subreaper():
        _subreaper = True
    return _subreaper is True


def reap() -> list[tuple[int, int, float]]:
    """Collect every ended child without blocking: (pid, exit code, CPU seconds). The exit code
    follows Popen: negative signal number when killed. Reaps ALL children of the process,
    including reparented orphans whose pids the caller does not know."""
    ended: list[tuple[int, int, float]] = []
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return ended
        if pid == 0:
            return ended
        cpu_s = usage.ru_utime + usage.ru_stime
        ended.append((pid, os.waitstatus_to_exitcode(status), cpu_s))


def wait_any(
    procs: Iterable[JobProcess],
    timeout_s: float | None,
    wake_fds: Iterable[int] = (),
) -> set[int]:
    """Block without using CPU until one of `procs` may have exited, one of `wake_fds` is
    readable or `timeout_s` passes. Pass only processes not yet reaped: a reaped
    one ends it at once. Returns the descriptors found readable (pidfds and wake fds; empty
    after a timeout; without pidfds a process's exit shows in none)."""
    poller = select.poll()
    blind = []
    for proc in procs:
        if proc.pidfd is None:
            blind.append(proc)
        else:
            poller.register(proc.pidfd, select.POLLIN)
    for fd in wake_fds:
        poller.register(fd, select.POLLIN)
    if blind:
        return _wait_polling(poller, blind, timeout_s)
    events = poller.poll(None if timeout_s is None else max(0.0, timeout_s) * 1000)
    return {fd for fd, _ in events}


def _wait_polling(
    poller: select.poll, blind: list[JobProcess], timeout_s: float | None
) -> set[int]:
    """wait_any for processes without a pidfd: check them every few milliseconds."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while not any(_has_exited(p) for p in blind):
        slice_s = _FALLBACK_POLL_INTERVAL_S
        if deadline is not None:
            slice_s = min(slice_s, deadline - time.monotonic())
        if slice_s <= 0:
            return set()
        events = poller.poll(slice_s * 1000)
        if events:
            return {fd for fd, _ in events}
    return set()


def _has_exited(proc: JobProcess) -> bool:
    """True when the child has ended (without reaping it) or is no longer our child."""
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


# --- the machine ------------------------------------------------------------------------------


def free_capacity_of_machine() -> tuple[int, int]:
    """(CPUs this process may use, total memory in bytes), for the default number of slots."""
    cpus = len(os.sched_getaffinity(0))
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return cpus, int(line.split()[1]) * 1024
    except OSError:
        pass
    return cpus, os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class SpawnError(ClobiError):
    """The job's command cannot be executed."""
