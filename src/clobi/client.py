"""The Job Management Interface: what the CLI, the API and scripts use to work with jobs.

`Client(session)` works on an embedded session directory today and on a URL session once the
server exists; the CLI is a thin layer over it.
"""

from __future__ import annotations

import builtins
import getpass
import io
import os
import select
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from clobi.errors import NotFound, UsageError
from clobi.model.records import AgentRecord, AttemptRecord, Event, JobFilter, JobRecord, Submission
from clobi.model.spec import JobSpec
from clobi.model.states import JobState
from clobi.session import Session, find_session

if TYPE_CHECKING:
    from clobi.sandbox.base import SandboxStore

WAIT_POLL_S = 0.2  # longest pause between two looks while waiting
FIRST_POLL_S = 0.005  # without a store's wake-ups the pauses start here and grow by half
REMOTE_POLL_S = 0.5  # log follow through a server: tails change once a heartbeat


@dataclass(frozen=True)
class JobView:
    """A job with its spec and attempts, as `clobi show` prints it."""

    job: JobRecord
    spec: JobSpec
    input_sha256: str | None
    attempts: list[AttemptRecord]


class Client:
    """Submit, inspect and control jobs of one session."""

    def __init__(self, session: Session | str | os.PathLike[str] | None = None) -> None:
        self.session = session if isinstance(session, Session) else find_session(session)
        self.store = self.session.open_store()
        self._sandbox: SandboxStore | None = None  # opened on first use: listing needs none
        self.owner = _user_name()

    @property
    def sandbox(self) -> SandboxStore:
        """The session's sandbox store (inputs and outputs)."""
        if self._sandbox is None:
            self._sandbox = self.session.open_sandbox()
        return self._sandbox

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()
        if self._sandbox is not None:
            self._sandbox.close()

    # --- submitting ------------------------------------------------------------------
    def submit(
        self,
        spec: JobSpec | Mapping[str, Any],
        *,
        base_dir: Path | None = None,
        idempotency_key: str | None = None,
    ) -> list[int]:
        """Submit a spec (an array gives many jobs); return the job ids.

        Inputs are packed from `base_dir` (default: the current directory) and stored once.
        With an `idempotency_key` already used, the earlier submit's ids come back instead.
        """
        if not isinstance(spec, JobSpec):
            from clobi.model.specparse import parse_spec

            spec = parse_spec(dict(spec), source="python")
        sha = self._store_inputs(spec, base_dir or Path.cwd()) if spec.inputs else None
        sub = Submission(
            spec=spec, input_sha256=sha, owner=self.owner, idempotency_key=idempotency_key
        )
        return self.store.submit(sub)

    def _store_inputs(self, spec: JobSpec, base_dir: Path) -> str:
        import tempfile

        from clobi.sandbox import packing

        with tempfile.TemporaryFile() as spool:
            packing.pack_inputs(spec.inputs, base_dir, spool)
            spool.seek(0)
            return self.sandbox.put_input(spool).sha256

    # --- reading ---------------------------------------------------------------------
    def get(self, job_id: int) -> JobView:
        """One job with its spec and attempts; raises `NotFound`."""
        job = self.store.get_job(job_id)
        spec, sha = self.store.job_spec(job_id)
        return JobView(job, spec, sha, self.store.attempts(job_id))

    def list(
        self,
        states: Iterable[str | JobState] = (),
        tags: Iterable[str] = (),
        limit: int | None = 100,
        after_id: int = 0,
        ids: Sequence[int] = (),
        *,
        owner: str | None = None,
        text: str | None = None,
        sort: str = "id",
        descending: bool = False,
        after_value: float | str | None = None,
        offset: int = 0,
    ) -> builtins.list[JobRecord]:
        """Jobs filtered by states, tags (all must match), `owner` and `text` (a substring of
        the name, any case), in `sort` order (see `JobFilter`; default: id order). Pages:
        `after_id` (+ `after_value` for keyed sorts) of the last job seen, or `offset`."""
        flt = JobFilter(
            states=frozenset(JobState(s) for s in states),
            tags=frozenset(tags),
            ids=tuple(ids),
            owner=owner,
            text=text,
            sort=sort,
            descending=descending,
            after_id=after_id,
            after_value=after_value,
            offset=offset,
            limit=limit,
        )
        return self.store.list_jobs(flt)

    def counts(self, job_ids: Sequence[int] | None = None) -> dict[JobState, int]:
        """How many jobs are in each state."""
        return self.store.count_states(job_ids)

    def events(self, job_id: int | None = None, after_id: int = 0) -> builtins.list[Event]:
        return self.store.events(job_id, after_id)

    def agents(self, include_gone: bool = False) -> builtins.list[AgentRecord]:
        return self.store.list_agents(include_gone)

    # --- acting ----------------------------------------------------------------------
    def kill(self, job_ids: Sequence[int]) -> builtins.list[int]:
        """Cancel jobs: queued ones at once, running ones at their agent's next heartbeat."""
        return self.store.kill(job_ids)

    def kill_state(self, state: str | JobState) -> builtins.list[int]:
        """Kill every job in one state (queued or running)."""
        ids = [j.id for j in self.list(states=[state], limit=None)]
        return self.kill(ids)

    def remove(self, job_ids: Sequence[int]) -> builtins.list[int]:
        """Delete queued or finished jobs (and their outputs)."""
        refs = [self.store.output_ref(i) for i in job_ids]
        removed = self.store.remove(job_ids)
        for ref in refs:
            if ref is not None and ref.key and ref.job_id in removed:
                self.sandbox.delete_output(ref.key)
        return removed

    def retry(self, job_ids: Sequence[int]) -> builtins.list[int]:
        """Requeue failed, timed-out or cancelled jobs."""
        return self.store.retry(job_ids)

    def wait(
        self,
        job_ids: Sequence[int] | None = None,
        timeout_s: float | None = None,
        on_progress: Callable[[dict[JobState, int]], None] | None = None,
    ) -> dict[JobState, int]:
        """Block until the jobs (default: all) are finished; return the final counts.

        Raises `TimeoutError` when `timeout_s` passes first. Woken by the store when jobs end
        where it can (embedded sessions); elsewhere it looks again after 5 ms, then ever
        less often up to every `WAIT_POLL_S`, so short jobs are not waited for long.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        ends = self.store.watch_ends()  # before the first look: no end goes unnoticed
        poll_s = WAIT_POLL_S if ends is not None else min(FIRST_POLL_S, WAIT_POLL_S)
        try:
            while True:
                counts = self.counts(job_ids)
                if on_progress is not None:
                    on_progress(counts)
                if counts[JobState.QUEUED] == 0 and counts[JobState.RUNNING] == 0:
                    return counts
                now = time.monotonic()
                if deadline is not None and now > deadline:
                    raise TimeoutError(f"jobs still unfinished after {timeout_s} s")
                pause_s = poll_s if deadline is None else min(poll_s, deadline - now)
                if ends is None:
                    time.sleep(max(0.0, pause_s))
                    poll_s = min(poll_s * 1.5, WAIT_POLL_S)
                elif select.select([ends], [], [], max(0.0, pause_s))[0]:
                    ends.rang()
        finally:
            if ends is not None:
                ends.close()

    # --- outputs ---------------------------------------------------------------------
    def open_output(self, job_id: int, attempt_id: int | None = None) -> BinaryIO:
        """The output archive (a tar stream) of the job's latest attempt with output."""
        ref = self.store.output_ref(job_id, attempt_id)
        if ref is None:
            self.store.get_job(job_id)  # NotFound for unknown jobs
            raise NotFound(f"job {job_id}: has no output yet")
        if ref.inline is not None:
            return io.BytesIO(ref.inline)
        assert ref.key is not None
        return self.sandbox.open_output(ref.key)

    def output(
        self, job_id: int, to_dir: Path, attempt_id: int | None = None
    ) -> builtins.list[str]:
        """Extract the job's output (stdout, stderr, declared outputs) into `to_dir`."""
        from clobi.sandbox import archive

        to_dir.mkdir(parents=True, exist_ok=True)
        with self.open_output(job_id, attempt_id) as src:
            return archive.unpack(src, to_dir)

    def read_output_file(self, job_id: int, name: str = "stdout") -> bytes:
        """One file of the job's output, e.g. its stdout; raises `NotFound`."""
        from clobi.sandbox import archive

        with self.open_output(job_id) as src:
            data = archive.read_member(src, name)
        if data is None:
            raise NotFound(f"job {job_id}: output has no {name!r}")
        return data

    def logs(self, job_id: int, stream: str = "stdout", follow: bool = False) -> Iterator[bytes]:
        """The job's stdout (or stderr): live while it runs (from its work directory when
        that is on this machine, else from the tail its agent keeps in the store, the newest
        MiB, renewed every heartbeat), from the output archive once it has finished. With
        `follow`, yields until the job ends. A rerun (a new attempt) starts the log over."""
        if stream not in ("stdout", "stderr"):
            raise UsageError(f"logs: stream must be stdout or stderr, not {stream!r}")
        sent, attempt = 0, None
        while True:
            job = self.store.get_job(job_id)
            if job.current_attempt not in (None, attempt):
                sent, attempt = 0, job.current_attempt
            if job.state.terminal or (job.state is JobState.QUEUED and not follow):
                yield from _skip(self._final_log(job_id, stream), sent)
                return
            offset, chunk = self._live_log(job, stream, sent)
            sent = offset + len(chunk)
            if chunk:
                yield chunk
            if not follow:
                return
            time.sleep(WAIT_POLL_S if self.session.credentials is None else REMOTE_POLL_S)

    def _final_log(self, job_id: int, stream: str) -> bytes:
        try:
            return self.read_output_file(job_id, stream)
        except NotFound:
            return b""

    def _live_log(self, job: JobRecord, stream: str, offset: int) -> tuple[int, bytes]:
        """Where the new bytes start (past `offset` when older ones are gone) and the bytes."""
        if job.current_attempt is None or job.state is not JobState.RUNNING:
            return offset, b""
        local = self._local_log(job, stream, offset)
        if local is not None:
            return offset, local
        tail = self.store.read_log(job.id, stream, offset)
        if tail is None or tail.attempt_id != job.current_attempt:
            return offset, b""
        return tail.offset, tail.data

    def _local_log(self, job: JobRecord, stream: str, offset: int) -> bytes | None:
        if self.session.credentials is not None:
            return None  # a URL session: the server's word, whatever this machine holds
        attempts = [a for a in self.store.attempts(job.id) if a.id == job.current_attempt]
        if not attempts or not attempts[0].workdir:
            return None
        try:
            with (Path(attempts[0].workdir) / stream).open("rb") as f:
                f.seek(offset)
                return f.read(1 << 20)
        except OSError:
            return None


def _skip(data: bytes, sent: int) -> Iterator[bytes]:
    if len(data) > sent:
        yield data[sent:]


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
