"""The part of the `ssh` provider that runs on each host: a small stdlib-only program, sent
as source and run with `python -I -c`. One JSON request in argv (launch, status, stop), one JSON
answer on stdout; the bootstrap token, for a launch, on stdin. It starts the agent detached
(setsid) and keeps a pid file per instance (pid, start time, boot id), so a restarted manager
can still find and stop it.

The functions below use only the imports of `_REMOTE_PRELUDE` and each other: `source()` joins
their text into the program.
"""

from __future__ import annotations

import contextlib
import fcntl
import inspect
import json
import os
import signal
import sys
import time
from functools import cache
from typing import Any

# --- the helper that runs on the host ---------------------------------------------------------
# Sent as source and run by the host's python: stdlib only, no names from outside these
# functions but the imports of `_REMOTE_PRELUDE`. One JSON request in argv, one answer out.

_REMOTE_PRELUDE = (
    "from __future__ import annotations\n"
    "import contextlib, fcntl, json, os, signal, sys, time\n"
    "from typing import Any\n"
)


def _remote_main() -> None:
    request = json.loads(sys.argv[1])
    folder = os.path.expanduser(request["dir"])
    os.makedirs(folder, mode=0o700, exist_ok=True)
    ops = {"launch": _remote_launch, "status": _remote_status, "stop": _remote_stop}
    sys.stdout.write(json.dumps(ops[request["op"]](request, folder)))


def _remote_launch(request: dict[str, Any], folder: str) -> dict[str, Any]:
    """Start the instance's agent unless an agent of the pool already lives here."""
    token = sys.stdin.readline().strip()  # the bootstrap token: never in argv
    instance_id = int(request["id"])
    with open(os.path.join(folder, ".lock"), "a", encoding="utf-8", opener=_remote_private) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name in sorted(os.listdir(folder)):
            other = name.removesuffix(".pid")
            record = _remote_live(folder, int(other)) if other.isdigit() else None
            if record is not None and int(other) == instance_id:
                return {"pid": record["pid"]}
            if record is not None and record.get("slot") == request["slot"]:
                return {"busy": int(other)}
        _remote_prune(folder)
        return _remote_spawn(request, folder, token)


def _remote_spawn(request: dict[str, Any], folder: str, token: str) -> dict[str, Any]:
    instance_id = int(request["id"])
    log_path = os.path.join(folder, f"{instance_id}.log")
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    argv = [sys.executable, "-m", "clobi", "agent", *request["args"]]
    pid = os.posix_spawn(
        sys.executable,
        argv,
        {**os.environ, "CLOBI_TOKEN": token},
        file_actions=actions,
        setsid=True,
        setsigmask=(),
        setsigdef=set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP},
    )
    stat = _remote_stat(pid)  # our child: its entry stays until we reap it
    record = {"pid": pid, "start": stat[2] if stat else -1, "boot": _remote_boot_id()}
    record["slot"] = request["slot"]
    pid_path = os.path.join(folder, f"{instance_id}.pid")
    with open(pid_path + ".tmp", "w", encoding="utf-8", opener=_remote_private) as f:
        json.dump(record, f)
    os.replace(pid_path + ".tmp", pid_path)
    deadline = time.monotonic() + float(request["settle_s"])
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            os.unlink(pid_path)
            return {"exited": os.waitstatus_to_exitcode(status), "log": _remote_tail(log_path)}
        time.sleep(0.02)
    return {"pid": pid}


def _remote_private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def _remote_tail(path: str) -> str:
    with open(path, "rb") as f:
        lines = f.read()[-2000:].decode("utf-8", "replace").strip().splitlines()
    return " | ".join(lines[-3:])[-500:]


def _remote_prune(folder: str) -> None:
    """Forget agents that are over (their pid files); keep their logs a week."""
    week_ago = time.time() - 7 * 86400
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        stem, _, kind = name.partition(".")
        with contextlib.suppress(OSError):
            over = stem.isdigit() and _remote_live(folder, int(stem)) is None
            if over and (kind == "pid" or (kind == "log" and os.stat(path).st_mtime < week_ago)):
                os.unlink(path)


def _remote_status(request: dict[str, Any], folder: str) -> dict[str, Any]:
    return {"running": [i for i in request["ids"] if _remote_agent(folder, int(i)) is not None]}


def _remote_stop(request: dict[str, Any], folder: str) -> dict[str, Any]:
    """SIGTERM the agents' process groups; after the grace, kill what is left, descendants
    included. Pid files of dead agents are removed, their logs kept."""
    agents = {int(i): _remote_agent(folder, int(i)) for i in request["ids"]}
    live = {i: pid for i, pid in agents.items() if pid is not None}
    for pid in live.values():
        _remote_signal(pid, signal.SIGTERM, group=True)
    deadline = time.monotonic() + float(request["grace_s"])
    while any(_remote_agent(folder, i) is not None for i in live) and time.monotonic() < deadline:
        time.sleep(0.05)
    killed = [i for i in live if _remote_agent(folder, i) is not None]
    for i in killed:
        _remote_kill_tree(live[i])
    deadline = time.monotonic() + 2.0
    while any(_remote_agent(folder, i) is not None for i in live) and time.monotonic() < deadline:
        time.sleep(0.02)
    survivors = [i for i in live if _remote_agent(folder, i) is not None]
    for i in set(agents) - set(survivors):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(folder, f"{i}.pid"))
    return {"stopped": sorted(live), "killed": sorted(killed), "survivors": survivors}


def _remote_kill_tree(root: int) -> None:
    """Stop the agent and every descendant (a stopped process cannot fork or exit, and the
    agent is a subreaper: escaped job processes are still below it), then SIGKILL them all."""
    _remote_signal(root, signal.SIGSTOP)
    stopped: set[int] = set()
    for _ in range(16):
        new = _remote_descendants(root) - stopped
        if not new:
            break
        for pid in new:
            _remote_signal(pid, signal.SIGSTOP)
        stopped |= new
    _remote_signal(root, signal.SIGKILL, group=True)
    for pid in stopped:
        _remote_signal(pid, signal.SIGKILL)


def _remote_descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        stat = _remote_stat(int(name)) if name.isdigit() else None
        if stat is not None and stat[0] not in ("Z", "X", "x"):
            children.setdefault(stat[1], []).append(int(name))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _remote_signal(pid: int, sig: int, group: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _remote_agent(folder: str, instance_id: int) -> int | None:
    record = _remote_live(folder, instance_id)
    return None if record is None else int(record["pid"])


def _remote_live(folder: str, instance_id: int) -> dict[str, Any] | None:
    """The pid file of the instance while the very process started for it lives (same boot,
    same pid, same start time); None otherwise."""
    try:
        with open(os.path.join(folder, f"{instance_id}.pid"), encoding="utf-8") as f:
            record = dict(json.load(f))
        stat = _remote_stat(int(record["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if stat is None or stat[0] in ("Z", "X", "x") or record.get("boot") != _remote_boot_id():
        return None
    return record if stat[2] == record.get("start") else None


def _remote_stat(pid: int) -> tuple[str, int, int] | None:
    """State, parent pid and start time (clock ticks after boot) from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            rest = f.read().rpartition(")")[2].split()  # the name may hold spaces and ')'
        return rest[0], int(rest[1]), int(rest[19])
    except (OSError, IndexError, ValueError):
        return None


def _remote_boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


_REMOTE_FUNCTIONS = (
    _remote_launch,
    _remote_spawn,
    _remote_private,
    _remote_tail,
    _remote_prune,
    _remote_status,
    _remote_stop,
    _remote_kill_tree,
    _remote_descendants,
    _remote_signal,
    _remote_agent,
    _remote_live,
    _remote_stat,
    _remote_boot_id,
    _remote_main,
)


@cache
def source() -> str:
    """The helper's program, as `python -c` runs it on the host."""
    body = "\n".join(inspect.getsource(f) for f in _REMOTE_FUNCTIONS)
    return f"{_REMOTE_PRELUDE}\n{body}\n_remote_main()\n"
