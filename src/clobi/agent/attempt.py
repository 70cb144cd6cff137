"""One attempt on an agent: stage in, start, and stage out.

Layout of an attempt's directory `<work>/<attempt id>/`:
`job/` (the job's own area; inputs are unpacked here and the command starts in
`job/<spec.workdir>`), `stdout`, `stderr` and `attempt.log` beside it, out of the job's reach
of output globs.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, cast

from clobi.agent.process import JobProcess, SpawnError, spawn
from clobi.errors import SandboxError
from clobi.model.records import Claim, Outcome
from clobi.model.spec import expand_command, expand_env
from clobi.model.states import AttemptState
from clobi.sandbox import archive
from clobi.sandbox.base import SandboxStore


@dataclass
class Attempt:
    """A claimed job on this agent, from stage-in to its reported outcome."""

    claim: Claim
    root: Path
    lease_deadline: float  # monotonic; past it the lease may be gone: stop the job
    proc: JobProcess | None = None
    walltime_deadline: float | None = None
    ended_as: AttemptState | None = None  # set when the agent stopped it (timeout, cancel)
    reason: str = ""
    exit_code: int | None = None
    user_error: bool = False
    started_wall: float = field(default_factory=time.time)
    outcome: Outcome | None = None

    @property
    def id(self) -> int:
        return self.claim.attempt_id

    @property
    def job_dir(self) -> Path:
        return self.root / "job"

    @property
    def cpus(self) -> float:
        return self.claim.spec.resources.cpus


def start(attempt: Attempt, sandbox: SandboxStore) -> None:
    """Stage in and spawn. A problem the user must fix ends the attempt as a user error."""
    spec = attempt.claim.spec
    try:
        attempt.job_dir.mkdir(parents=True)
        if attempt.claim.input_sha256:
            with sandbox.open_input(attempt.claim.input_sha256) as src:
                archive.unpack(src, attempt.job_dir)
        cwd = attempt.job_dir / spec.workdir
        cwd.mkdir(parents=True, exist_ok=True)
        attempt.proc = spawn(
            expand_command(spec, attempt.claim.array_index),
            env=expand_env(spec, attempt.claim.array_index, attempt.claim.job_id),
            cwd=cwd,
            stdout_path=attempt.root / "stdout",
            stderr_path=attempt.root / "stderr",
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
    _write_log(attempt, agent_name)
    patterns = attempt.claim.spec.outputs
    extra = [(attempt.root / n, n) for n in ("stdout", "stderr", "attempt.log")]
    extra = [(p, n) for p, n in extra if p.exists()]
    cwd = attempt.job_dir / attempt.claim.spec.workdir
    with tempfile.SpooledTemporaryFile(max_size=inline_max + 1) as spooled:
        spool = cast(BinaryIO, spooled)
        try:
            archive.collect_outputs(cwd, patterns if cwd.is_dir() else (), spool, extra=extra)
        except SandboxError as exc:
            spool.seek(0)
            spool.truncate()
            archive.collect_outputs(attempt.root, (), spool, extra=extra)
            _fail(attempt, f"output rejected: {exc.message}", user_error=True)
        return _store_output(attempt, spool, sandbox, inline_max)


def _store_output(
    attempt: Attempt,
    spool: BinaryIO,
    sandbox: SandboxStore,
    inline_max: int,
) -> Outcome:
    size = spool.tell()
    spool.seek(0)
    base = Outcome(
        attempt.id,
        attempt.ended_as or AttemptState.FAILED,
        attempt.exit_code,
        attempt.reason,
        attempt.user_error,
    )
    if size <= inline_max:
        data = spool.read()
        return replace(
            base,
            output_inline=data,
            output_size=size,
            output_sha256=hashlib.sha256(data).hexdigest(),
        )
    blob = sandbox.put_output(attempt.id, spool)
    return replace(base, output_key=blob.key, output_size=blob.size, output_sha256=blob.sha256)


def _write_log(attempt: Attempt, agent_name: str) -> None:
    claim = attempt.claim
    lines = [
        f"job {claim.job_id} attempt {attempt.id} on agent {agent_name} ({socket.gethostname()})",
        f"started {time.strftime('%Y-%m-%dT%H:%M:%S%z', time.localtime(attempt.started_wall))}",
        f"ended   {time.strftime('%Y-%m-%dT%H:%M:%S%z')}",
        f"command {list(expand_command(claim.spec, claim.array_index))}",
        f"outcome {attempt.ended_as} exit_code={attempt.exit_code} {attempt.reason}".rstrip(),
    ]
    with contextlib.suppress(OSError):
        (attempt.root / "attempt.log").write_text("\n".join(lines) + "\n", encoding="utf-8")


def discard(attempt: Attempt) -> None:
    """Remove the attempt's directory once its outcome is reported (or it was lost)."""
    shutil.rmtree(attempt.root, ignore_errors=True)
