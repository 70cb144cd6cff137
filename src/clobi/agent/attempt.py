"""One attempt on an agent: stage in, start, and stage out.

Layout of an attempt's directory `<work>/<attempt id>/`:
`job/` (the job's own area; inputs are unpacked here and the command starts in
`job/<spec.workdir>`), `stdout` and `stderr` beside it, out of reach of output globs.

This is the agent's hot path: the common case (no declared outputs, small stdout/stderr) is
packed in memory with `tarwriter` and removed with a few syscalls; everything else takes the
general, streaming path through `archive`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

from clobi.agent.process import JobProcess, SpawnError, spawn
from clobi.agent.workdirs import WorkDirs
from clobi.errors import SandboxError
from clobi.model.records import Claim, Outcome
from clobi.model.spec import expand_command, expand_env
from clobi.model.states import AttemptState
from clobi.sandbox import archive, packing
from clobi.sandbox.base import SandboxStore
from clobi.sandbox.tarwriter import small_tar

_HOST = socket.gethostname()


@dataclass
class Attempt:
    """A claimed job on this agent, from stage-in to its reported outcome."""

    claim: Claim
    root: str  # the attempt's directory
    lease_deadline: float  # monotonic; past it the lease may be gone: stop the job
    proc: JobProcess | None = None
    walltime_deadline: float | None = None
    ended_as: AttemptState | None = None  # set when the agent stopped it (timeout, cancel)
    reason: str = ""
    exit_code: int | None = None
    user_error: bool = False
    started_wall: float = field(default_factory=time.time)
    outcome: Outcome | None = None
    log_sizes: dict[str, int] | None = None  # stdout/stderr sizes once ended (absent: none)

    @property
    def id(self) -> int:
        return self.claim.attempt_id

    @property
    def job_dir(self) -> str:
        return self.root + "/job"

    @property
    def cwd(self) -> str:
        workdir = self.claim.spec.workdir
        return self.job_dir if workdir == "." else f"{self.job_dir}/{workdir}"

    @property
    def cpus(self) -> float:
        return self.claim.spec.resources.cpus


def start(attempt: Attempt, sandbox: SandboxStore, dirs: WorkDirs) -> None:
    """Stage in and spawn. A problem the user must fix ends the attempt as a user error."""
    claim = attempt.claim
    spec = claim.spec
    try:
        dirs.make(attempt.root)
        if claim.input_sha256:
            with sandbox.open_input(claim.input_sha256) as src:
                archive.unpack(src, Path(attempt.job_dir))
        if spec.workdir != ".":
            os.makedirs(attempt.cwd, exist_ok=True)
        attempt.proc = spawn(
            expand_command(spec, claim.array_index),
            env=expand_env(spec, claim.array_index, claim.job_id),
            cwd=attempt.cwd,
            stdout_path=attempt.root + "/stdout",
            stderr_path=attempt.root + "/stderr",
            attempt_id=attempt.id,
        )
    except (SpawnError, SandboxError) as exc:
        _fail(attempt, f"{type(exc).__name__}: {exc.message}", user_error=True)
        return
    except OSError as exc:
        _fail(attempt, f"stage-in failed: {exc}", user_error=False)
        return
    walltime = spec.resources.walltime_s
    if walltime is not None:
        attempt.walltime_deadline = time.monotonic() + walltime


def _fail(attempt: Attempt, reason: str, user_error: bool) -> None:
    attempt.ended_as = AttemptState.FAILED
    attempt.reason = reason
    attempt.user_error = user_error


def ended(attempt: Attempt, exit_code: int) -> None:
    """Record how the process ended (Popen convention: negative = killed by that signal)."""
    attempt.exit_code = exit_code
    if attempt.ended_as is not None:
        return
    if exit_code == 0:
        attempt.ended_as = AttemptState.SUCCEEDED
    else:
        attempt.ended_as = AttemptState.FAILED
        attempt.reason = _exit_reason(exit_code)


def _exit_reason(exit_code: int) -> str:
    if exit_code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-exit_code).name}"
        return f"killed by signal {-exit_code}"
    return f"exit code {exit_code}"


def finish(attempt: Attempt, sandbox: SandboxStore, inline_max: int, agent_name: str) -> Outcome:
    """Pack and store the output, then describe the outcome to report. Never raises for the
    job's own misdeeds: an unsafe output fails the job as a user error, keeping the logs."""
    log = _attempt_log(attempt, agent_name)
    if not attempt.claim.spec.outputs:
        small = _small_logs(attempt, inline_max - len(log) - 4096)
        if small is not None:
            data = small_tar([*small, ("attempt.log", log)], int(time.time()))
            return _inline(attempt, data)
    return _finish_general(attempt, sandbox, inline_max, log)


def output_may_be_large(attempt: Attempt, inline_max: int) -> bool:
    """Whether storing the output may take a while: declared outputs, or logs too big to
    report inline."""
    if attempt.claim.spec.outputs:
        return True
    sizes = {}
    for name in ("stdout", "stderr"):
        with contextlib.suppress(OSError):
            sizes[name] = os.stat(f"{attempt.root}/{name}").st_size
    attempt.log_sizes = sizes  # the process is over: they stay what they are
    return sum(sizes.values()) > inline_max


def _small_logs(attempt: Attempt, budget: int) -> list[tuple[str, bytes]] | None:
    """stdout and stderr read whole when together they fit `budget`, else None. An empty
    file is only looked at (a stat costs a third of an open, read and close)."""
    if budget < 0:
        return None
    members = []
    known = attempt.log_sizes
    for name in ("stdout", "stderr"):
        path = f"{attempt.root}/{name}"
        try:
            size = os.stat(path).st_size if known is None else known[name]
            if size == 0:
                members.append((name, b""))
                continue
            with open(path, "rb") as f:
                data = f.read(budget + 1)
        except (FileNotFoundError, KeyError):
            continue
        budget -= len(data)
        if budget < 0:
            return None
        members.append((name, data))
    return members


def _finish_general(
    attempt: Attempt, sandbox: SandboxStore, inline_max: int, log: bytes
) -> Outcome:
    log_path = Path(attempt.root) / "attempt.log"
    with contextlib.suppress(OSError):
        log_path.write_bytes(log)
    root = Path(attempt.root)
    extra = [(root / n, n) for n in ("stdout", "stderr", "attempt.log") if (root / n).exists()]
    cwd = Path(attempt.cwd)
    patterns = attempt.claim.spec.outputs if cwd.is_dir() else ()
    with tempfile.SpooledTemporaryFile(max_size=inline_max + 1) as spooled:
        spool = cast(BinaryIO, spooled)
        try:
            packing.collect_outputs(cwd, patterns, spool, extra=extra)
        except SandboxError as exc:
            spool.seek(0)
            spool.truncate()
            packing.collect_outputs(root, (), spool, extra=extra)
            _fail(attempt, f"output rejected: {exc.message}", user_error=True)
        size = spool.tell()
        spool.seek(0)
        if size <= inline_max:
            return _inline(attempt, spool.read())
        blob = sandbox.put_output(attempt.id, spool)
    return _outcome(attempt, None, blob.key, blob.size, blob.sha256)


def _outcome(
    attempt: Attempt, inline: bytes | None, key: str | None, size: int, sha256: str
) -> Outcome:
    return Outcome(
        attempt.id,
        attempt.ended_as or AttemptState.FAILED,
        attempt.exit_code,
        attempt.reason,
        attempt.user_error,
        output_key=key,
        output_inline=inline,
        output_size=size,
        output_sha256=sha256,
    )


def _inline(attempt: Attempt, data: bytes) -> Outcome:
    return _outcome(attempt, data, None, len(data), hashlib.sha256(data).hexdigest())


def _attempt_log(attempt: Attempt, agent_name: str) -> bytes:
    claim = attempt.claim
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(attempt.started_wall))
    lines = (
        f"job {claim.job_id} attempt {attempt.id} on agent {agent_name} ({_HOST})\n"
        f"started {started}\n"
        f"ended   {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n"
        f"command {expand_command(claim.spec, claim.array_index)}\n"
        f"outcome {attempt.ended_as} exit_code={attempt.exit_code} {attempt.reason}".rstrip()
    )
    return (lines + "\n").encode()


def discard(attempt: Attempt, dirs: WorkDirs) -> None:
    """Give back the attempt's directory once its outcome is reported (or it was lost)."""
    dirs.release(attempt.root)
