"""A 1 GiB input through a shared session, as a user and a remote agent run it: `clobi submit`
streams it up to `clobi server`, the agent streams it down, the job hands it back as its
output, the agent streams that up and `clobi output` streams it down again. The bytes are
checked by sha256 at both ends, and no process holds more than a fraction of them: each one's
peak resident set (VmHWM) stays far below the size of the data."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.acceptance.harness import fast_session
from tests.acceptance.test_remote_session import _wait_for_url, clobi, stop, user_env
from tests.conftest import need

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MiB = 1 << 20
GiB = 1 << 30
DATA_BYTES = 1 * GiB
# A Clobi process (server, agent, CLI) holds 45-70 MiB; streaming adds a few 1 MiB chunks.
PEAK_RSS_LIMIT_BYTES = 256 * MiB
# At most four copies are on disk at once (while the job's output goes up: the server's input
# archive, the agent's work directory and output spool, the server's incoming output), plus room.
DISK_NEEDED_BYTES = 5 * GiB


@dataclass
class SharedSession:
    """`clobi server` as a process, and the environment of users of this machine."""

    url: str
    admin: str
    home: Path
    proc: subprocess.Popen[bytes]
    tmp: Path

    def env(self, token: str | None = None) -> dict[str, str]:
        # temporary files (the client's and the agent's spools) on the disk checked for room
        return user_env(self.home, token, TMPDIR=str(self.tmp))

    def token(self, role: str, *extra: str) -> str:
        args = ("token", "create", "--role", role, *extra, "--session", self.url)
        return clobi(*args, env=self.env(self.admin)).stdout.strip()


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[SharedSession]:
    need(
        shutil.disk_usage(tmp_path).free >= DISK_NEEDED_BYTES,
        f"{DISK_NEEDED_BYTES // GiB} GiB free in {tmp_path} for copies of a 1 GiB sandbox",
    )
    # Leases far shorter than moving 1 GiB takes: the agent must keep them alive while it
    # stages the sandbox in and out, or the job is taken for lost and never finishes.
    session = fast_session(tmp_path / "session", lease_s=2.0, heartbeat_s=0.25)
    home, log_path, tmp = tmp_path / "home", tmp_path / "server.log", tmp_path / "tmp"
    tmp.mkdir()
    admin_args = ("token", "create", "--role", "admin", "--session", session.root)
    admin = clobi(*admin_args, env=user_env(home)).stdout.strip()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clobi", "server", "--session", str(session.root)],
            env=user_env(home, CLOBI_BIND="127.0.0.1:0"),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield SharedSession(_wait_for_url(log_path, proc), admin, home, proc, tmp)
    finally:
        stop(proc)
    assert "Traceback" not in log_path.read_text()


def write_random_file(path: Path, size: int) -> str:
    """Write `size` bytes that do not repeat (nor compress) cheaply; return their sha256."""
    block, digest = bytearray(os.urandom(MiB)), hashlib.sha256()
    with path.open("wb") as out:
        for index in range(size // MiB):
            block[:8] = index.to_bytes(8, "big")
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    with path.open("rb") as src:
        return hashlib.file_digest(src, "sha256").hexdigest()


def peak_rss_bytes(pid: int) -> int:
    """The high-water mark of a live process's resident set."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


# Runs the CLI in-process and, at exit, writes the process's own VmHWM to the file named by
# its first argument. A child's ru_maxrss would not do: the kernel counts in it the memory of
# the parent it was forked from (here, a test runner that may have grown large).
_MEASURED = """
import atexit, sys
def _peak(path=sys.argv[1]):
    with open("/proc/self/status") as f, open(path, "w") as out:
        out.write(next(line for line in f if line.startswith("VmHWM:")).split()[1])
atexit.register(_peak)
sys.argv = ["clobi", *sys.argv[2:]]
from clobi.cli.main import main
sys.exit(main())
"""


def run_measured(*args: str | Path, env: dict[str, str], logs: Path) -> tuple[str, int]:
    """Run the CLI to the end; its stdout and its peak resident set in bytes."""
    peak = logs / "peak"
    with (logs / "stdout").open("wb") as out, (logs / "stderr").open("wb") as err:
        proc = subprocess.run(
            [sys.executable, "-c", _MEASURED, str(peak), *map(str, args)],
            env=env,
            stdout=out,
            stderr=err,
            check=False,
        )
    stdout, stderr = (logs / "stdout").read_text(), (logs / "stderr").read_text()
    assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{stdout}\n{stderr}"
    return stdout, int(peak.read_text()) * 1024  # kilobytes


def test_a_1_gib_input_streams_to_a_remote_agent_and_back_without_sitting_in_memory(
    shared: SharedSession, tmp_path: Path
) -> None:
    user = shared.env(shared.token("user", "--name", "alice"))
    bootstrap = shared.token("bootstrap", "--pool", "remote")
    work, logs = tmp_path / "work", tmp_path / "logs"
    work.mkdir()
    logs.mkdir()
    expected = write_random_file(work / "data.bin", DATA_BYTES)
    (work / "job.toml").write_text(
        'command = ["sh", "-c", "mkdir out && sha256sum data.bin > out/sum'
        ' && mv data.bin out/data.bin"]\n'
        'inputs = ["data.bin"]\n'
        'outputs = ["out/*"]\n'
    )
    peaks: dict[str, int] = {}
    seconds: dict[str, float] = {}

    started = time.monotonic()
    submitted, peaks["submit"] = run_measured(
        "submit", work / "job.toml", "--session", shared.url, env=user, logs=logs
    )
    (job_id,) = submitted.split()
    (work / "data.bin").unlink()  # on the server now; room for the copies to come
    seconds["submit"] = time.monotonic() - started

    agent_log = tmp_path / "agent.log"
    with agent_log.open("wb") as log:
        agent = subprocess.Popen(
            [sys.executable, "-m", "clobi", "agent", "--join", shared.url, "--cpus", "1"],
            env=shared.env(bootstrap),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        started = time.monotonic()
        waited = clobi("wait", "--session", shared.url, "--timeout", "100", env=user)
        seconds["run"] = time.monotonic() - started
    finally:
        if agent.poll() is None:
            peaks["agent"] = peak_rss_bytes(agent.pid)
        assert stop(agent) == 0, agent_log.read_text()
    assert "1 succeeded" in waited.stdout, agent_log.read_text()

    started = time.monotonic()
    out = tmp_path / "out"
    _, peaks["output"] = run_measured(
        "output", job_id, "--to", out, "--session", shared.url, env=user, logs=logs
    )
    seconds["output"] = time.monotonic() - started
    peaks["server"] = peak_rss_bytes(shared.proc.pid)

    assert (out / "out" / "sum").read_text().split()[0] == expected  # what the job received
    assert (out / "out" / "data.bin").stat().st_size == DATA_BYTES
    assert sha256_of(out / "out" / "data.bin") == expected  # what came back
    shown = {name: f"{peak / MiB:.0f} MiB" for name, peak in peaks.items()}
    print(f"\npeak RSS: {shown}; seconds: {seconds}")
    assert all(peak < PEAK_RSS_LIMIT_BYTES for peak in peaks.values()), shown
