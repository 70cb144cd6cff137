"""The local agent processes `clobi run` starts for its session, and stops when it is done.

Each is `python -m clobi agent --session DIR --cpus C`, its output in a log file in the
session's `logs/` folder. Stopping sends SIGTERM (the agent drains: it takes no new jobs and
finishes the ones it runs), waits, then sends SIGKILL to any that are left.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

from clobi.errors import ClobiError

LOG_TAIL_LINES = 10


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
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def __enter__(self) -> LocalAgents:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop(timeout_s=30.0)

    def start(self) -> None:
        log_dir = self.root / "logs"
        log_dir.mkdir(exist_ok=True)
        for n in range(1, self.count + 1):
            log = log_dir / f"run-{os.getpid()}-agent-{n}.log"
            with log.open("wb") as sink:
                proc = subprocess.Popen(
                    self._argv(), stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT
                )
            self.procs.append(proc)
            self.logs.append(log)

    def _argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "clobi",
            "agent",
            "--session",
            str(self.root),
            "--cpus",
            f"{self.cpus:g}",
            "--memory",  # split, so that K agents do not each offer all of it
            str(machine_memory() // self.count),
        ]

    def check(self) -> None:
        """Raise when every agent has exited: nothing would run the remaining jobs."""
        if self.procs and all(p.poll() is not None for p in self.procs):
            codes = ", ".join(str(p.returncode) for p in self.procs)
            raise ClobiError(
                f"the run's agents exited early (exit codes {codes}); "
                f"the end of {self.logs[0]}:\n{self.log_tail(0)}"
            )

    def log_tail(self, n: int) -> str:
        try:
            lines = self.logs[n].read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return "  (no log)"
        return "\n".join(f"  {line}" for line in lines[-LOG_TAIL_LINES:]) or "  (empty log)"

    def stop(self, timeout_s: float) -> list[int]:
        """Drain every agent; kill those still alive after `timeout_s`. Returns exit codes."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + timeout_s
        try:
            for proc in self.procs:
                _wait(proc, deadline)
        except KeyboardInterrupt:  # a second Ctrl-C: do not wait for the drain
            pass
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        codes, self.procs = [p.returncode for p in self.procs], []
        return codes

    def remove_logs(self) -> None:
        for log in self.logs:
            log.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # kept when other runs still have logs there
            (self.root / "logs").rmdir()


def _wait(proc: subprocess.Popen[bytes], deadline: float) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
