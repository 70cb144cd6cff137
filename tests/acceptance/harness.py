"""Helpers for acceptance tests: sessions, agents as real processes, process inspection."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from clobi.client import Client
from clobi.session import Session, Settings, init_session


def fast_session(root: Path, **settings: float) -> Session:
    """A session with short leases so that failures show within seconds."""
    values = {
        "lease_s": 2.0,
        "heartbeat_s": 0.25,
        "agent_timeout_s": 4.0,
        "kill_grace_s": 0.5,
        "sweep_interval_s": 0.2,
        **settings,
    }
    return init_session(root, Settings(**values))  # type: ignore[arg-type]


def clobi(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "clobi", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
        check=False,
    )


class Agents:
    """Agent processes started by a test; all are killed at the end."""

    def __init__(self, session: Session, logs: Path) -> None:
        self.session, self.logs = session, logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, cpus: int = 2, *extra: str) -> subprocess.Popen[bytes]:
        n = len(self.procs)
        with (self.logs / f"agent-{n}.log").open("wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "clobi",
                    "agent",
                    "--session",
                    str(self.session.root),
                    "--cpus",
                    str(cpus),
                    "--name",
                    f"test-agent-{n}",
                    *extra,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def log_text(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.logs.glob("agent-*.log"))
        )


def wait_for(predicate: Callable[[], bool], timeout_s: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what or predicate}")


def processes_of_job(job_id: int) -> list[int]:
    """Pids of live processes whose environment says they belong to the job."""
    marker = f"CLOBI_JOB_ID={job_id}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            if marker in env and not _is_zombie(entry):
                found.append(int(entry))
    return found


def _is_zombie(pid: str) -> bool:
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] == "Z"
    return True


@contextlib.contextmanager
def client_of(session: Session) -> Iterator[Client]:
    client = Client(session)
    try:
        yield client
    finally:
        client.close()


def terminate_pool_machines(session: Session) -> None:
    """Stop every machine the session's pools' providers started (agents that joined a
    server do not name the session on their command line, so a test cannot find them
    otherwise)."""
    from clobi.manager.config import read_pools
    from clobi.manager.loop import join_info
    from clobi.manager.providers.registry import provider_class

    store = session.open_store()
    try:
        join = join_info(session, store, "http://127.0.0.1:1")
        for pool in read_pools(session.root / "clobi.toml").pools:
            ids = [i.provider_id for i in store.list_instances(pool.name) if i.provider_id]
            if ids:
                provider_class(pool.provider)(pool, join).terminate(ids)
    finally:
        store.close()
