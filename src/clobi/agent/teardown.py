"""Stopping jobs and cleaning up after them: signal a job's whole process group and the
processes that escaped it (found by the attempt marker in their environment), SIGKILL what is
left when the main process has ended, and TERM-then-KILL on a grace period without blocking.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from functools import cache

from clobi.agent.process import JobProcess, known_subreaper, live_mains

DEFAULT_TERM_GRACE_S = 10.0
# Processes created since a job started have larger pids until the pid counter wraps, so for a
# young job it is enough to look at the pids allocated since. Wrapping all the way around
# (pid_max >= 32768) takes far longer than a second; older jobs get a full /proc scan.
_RANGE_MAX_AGE_S = 1.0
_RANGE_MAX_PIDS = 256
# Rounds of "find marked processes, SIGKILL them" until one finds nothing new (forks race us).
_MAX_KILL_ROUNDS = 16


def group_alive(proc: JobProcess) -> bool:
    """True while any process is left in the job's process group (one syscall)."""
    try:
        os.killpg(proc.pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_job(proc: JobProcess, sig: int, *, scan: bool = True) -> None:
    """Send `sig` to the job's process group and, with `scan`, to its escaped processes (found
    by their marker). SIGKILL repeats the search until no new process turns up."""
    _killpg_quiet(proc.pgid, sig)
    if scan:
        _signal_marked(proc, sig, thorough=False)


def cleanup_leftovers(proc: JobProcess, *, thorough: bool = False) -> None:
    """After the job's main process exited: SIGKILL whatever is left of it, then release the
    pidfd. Call it before or right after reaping the main process (its pid is the group id).

    A subreaper without any child has no descendant left anywhere: killpg, waitid and prctl,
    nothing more. Otherwise it looks for marked processes among the pids allocated since the
    job started (a few for a short job: ~10-30 us) or in all of /proc (`thorough`, or a job
    older than a second: ~0.5 ms)."""
    _killpg_quiet(proc.pgid, signal.SIGKILL)
    if thorough or _has_children() or not known_subreaper():
        _signal_marked(proc, signal.SIGKILL, thorough=thorough)
    proc.close()


def _killpg_quiet(pgid: int, sig: int) -> None:
    """killpg, where an empty group is not an error."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _has_children() -> bool:
    """True when this process has any child, running or not yet reaped."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def _signal_marked(proc: JobProcess, sig: int, *, thorough: bool) -> None:
    """Signal the job's marked processes outside its group; for SIGKILL, repeat until a
    search finds nothing new (a process may fork between the search and the kill)."""
    rounds = _MAX_KILL_ROUNDS if sig == signal.SIGKILL else 1
    signalled: set[int] = set()
    for _ in range(rounds):
        found = [pid for pid in _marked_pids(proc, thorough) if pid not in signalled]
        if not found:
            return
        for pid in found:
            _signal_if_marked(pid, proc, sig)
        signalled.update(found)  # dying processes still show their marker for a moment


def _marked_pids(proc: JobProcess, thorough: bool) -> list[int]:
    """Pids of this uid's processes that carry the job's marker, except the agent and the
    main processes of its other jobs."""
    recent = None if thorough else _pids_since(proc)
    candidates = _all_pids() if recent is None else recent
    uid, marker = os.geteuid(), proc.marker
    skip = live_mains | {os.getpid()}
    return [p for p in candidates if p not in skip and _has_marker(p, marker) and _owned_by(p, uid)]


def _pids_since(proc: JobProcess) -> range | None:
    """The pids allocated since the job started, when that is known to be a short list."""
    fd = _ns_last_pid_fd()
    if fd is None or time.monotonic() - proc.started_monotonic > _RANGE_MAX_AGE_S:
        return None
    try:
        last = int(os.pread(fd, 32, 0))
    except (OSError, ValueError):
        return None
    if not 0 <= last - proc.pid <= _RANGE_MAX_PIDS:
        return None  # wrapped around, or too many to beat a listing
    return range(proc.pid + 1, last + 1)


@cache
def _ns_last_pid_fd() -> int | None:
    """The kernel's last allocated pid, kept open: pread costs a third of open+read+close."""
    try:
        return os.open("/proc/sys/kernel/ns_last_pid", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _all_pids() -> list[int]:
    """Every process in /proc. Reading all their environs takes ~0.5 ms for ~90 processes."""
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _has_marker(pid: int, marker: bytes) -> bool:
    """True when the process's environment holds exactly the entry `marker`."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:
        return False  # gone, or not ours to read
    return environ.startswith(marker + b"\0") or b"\0" + marker + b"\0" in environ


def _owned_by(pid: int, uid: int) -> bool:
    """True when the process runs as `uid` (root can read every environ: stay in our lane)."""
    try:
        return os.stat(f"/proc/{pid}").st_uid == uid
    except OSError:
        return False


def _signal_if_marked(pid: int, proc: JobProcess, sig: int) -> None:
    """Signal `pid` if it still carries the marker. The pidfd pins the process, so a pid that
    was recycled since the search is never signalled. Members of the job's group already got
    `sig` from killpg and are skipped."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return  # gone, or a thread id (its process has a pid of its own)
    try:
        if os.getpgid(pid) != proc.pgid and _has_marker(pid, proc.marker):
            signal.pidfd_send_signal(pidfd, sig)
    except OSError:
        pass  # exited meanwhile
    finally:
        os.close(pidfd)


class Terminator:
    """TERM now, KILL when the grace period ends, without blocking: the agent loop calls
    `start`, then sends SIGKILL (`signal_job`) to whatever `due` returns."""

    def __init__(self) -> None:
        self._kill_at: dict[int, tuple[float, JobProcess]] = {}

    def start(
        self, proc: JobProcess, grace_s: float = DEFAULT_TERM_GRACE_S, *, now: float | None = None
    ) -> None:
        """Send SIGTERM to the whole job; its KILL is due `grace_s` later. A job already being
        terminated keeps its first deadline."""
        if proc.pid in self._kill_at:
            return
        signal_job(proc, signal.SIGTERM)
        _killpg_quiet(proc.pgid, signal.SIGCONT)  # a stopped process only sees TERM once resumed
        now = time.monotonic() if now is None else now
        self._kill_at[proc.pid] = (now + grace_s, proc)

    def due(self, now: float | None = None) -> list[JobProcess]:
        """The jobs whose grace period is over; each is returned once."""
        now = time.monotonic() if now is None else now
        expired = [proc for at, proc in self._kill_at.values() if at <= now]
        for proc in expired:
            del self._kill_at[proc.pid]
        return expired

    def forget(self, proc: JobProcess) -> None:
        """Drop a job that ended during its grace period."""
        self._kill_at.pop(proc.pid, None)

    def forget_later(self, proc: JobProcess | None) -> None:
        """Drop a job the agent abandons after killing it: nobody will wait for it, so its
        pidfd is released now and `reap` collects its process as an unknown pid."""
        if proc is not None:
            self.forget(proc)
            proc.close()

    def next_due(self) -> float | None:
        """The earliest pending KILL time (monotonic), for the loop's wait timeout."""
        return min((at for at, _ in self._kill_at.values()), default=None)

    def __contains__(self, proc: JobProcess) -> bool:
        return proc.pid in self._kill_at
