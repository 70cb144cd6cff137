"""Processes as /proc shows them: the CPU time of whole process trees, resident memory, and
subreaping. Standard library only: the peers' runner imports it from the peers' venv too.

CPU of a tree = for the roots and every live descendant, own user+system time plus the time
of the children each has reaped (`cutime`/`cstime`). A job that ran and was reaped inside
the tree is counted once, in its reaper; the delta between two readings is the CPU the tree
spent in between.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Iterable

CLK_TCK = os.sysconf("SC_CLK_TCK")
_PR_SET_CHILD_SUBREAPER = 36


def _stat(pid: int) -> list[bytes] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is field 3, `state`)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].split()


def _ticks(fields: list[bytes]) -> int:
    """utime + stime + cutime + cstime, in clock ticks."""
    return sum(int(x) for x in fields[11:15])


def own_cpu_s(pid: int) -> float:
    """User+system seconds of one process itself (not its children), 0 if it is gone."""
    fields = _stat(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_s(roots: Iterable[int]) -> float:
    """User+system seconds used so far by `roots`, their descendants and what they reaped."""
    parents: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat(int(name))
        if fields is None:
            continue
        pid = int(name)
        ticks[pid] = _ticks(fields)
        parents.setdefault(int(fields[1]), []).append(pid)
    total, seen, todo = 0, set(), [r for r in roots if r in ticks]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += ticks[pid]
        todo.extend(parents.get(pid, ()))
    return total / CLK_TCK


def rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size of a process in MiB; (0, 0) if it is gone."""
    now = peak = 0.0
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                now = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return now, peak


def become_subreaper() -> None:
    """Orphans of our descendants (daemonised helpers) reparent to us and stay in our tree."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace_s: float = 20.0) -> int:
    """Ask a process (leader of its own session) to stop with `sig`; after `grace_s`, SIGKILL
    its whole process group. Returns its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


def reap_orphans() -> None:
    """Collect exited children we inherited as a subreaper (never blocks)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def descendants(root: int) -> list[int]:
    """Pids of the live descendants of `root`."""
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        fields = _stat(int(name)) if name.isdigit() else None
        if fields is not None:
            parents.setdefault(int(fields[1]), []).append(int(name))
    found, todo = [], list(parents.get(root, ()))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, ()))
    return found


def kill_descendants(root: int, sig: int = signal.SIGKILL) -> None:
    """Signal every live descendant of `root` (helpers that left the process group)."""
    for pid in descendants(root):
        with contextlib.suppress(OSError):
            os.kill(pid, sig)
    time.sleep(0.05)
    reap_orphans()
