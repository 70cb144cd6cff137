"""What `clobi run` prints at the end, and its `--to DIR` output extraction."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from clobi.cli.output import exit_text, fmt_counts
from clobi.errors import NotFound
from clobi.model.states import JobState

if TYPE_CHECKING:
    from clobi.client import Client
    from clobi.model.records import JobRecord

LIST_MAX = 50  # unsuccessful jobs listed one per line
STDERR_JOBS = 3  # failures whose stderr tail is shown for a temporary session
STDERR_LINES = 5


def extract_outputs(client: Client, ids: Sequence[int], to_dir: Path) -> None:
    """Each job's output into `to_dir/<job id>/`; jobs that never produced one are skipped."""
    extracted = 0
    for job_id in ids:
        try:
            client.output(job_id, to_dir / str(job_id))
        except NotFound:
            continue
        extracted += 1
    print(f"outputs of {extracted} jobs are in {to_dir}/<job id>/")


def summary(
    client: Client, ids: Sequence[int], counts: Mapping[JobState, int], *, session: Path | None
) -> None:
    """`N jobs: X succeeded, Y failed`, then every unsuccessful job (up to LIST_MAX).

    `session` is the kept session's folder, or None for a temporary session, which also
    gets the stderr tails of its first failures (they are gone afterwards).
    """
    print(f"{len(ids)} jobs: {fmt_counts(counts, keep=[JobState.SUCCEEDED, JobState.FAILED])}")
    unsuccessful = [s for s in JobState if s is not JobState.SUCCEEDED and counts.get(s, 0)]
    if not unsuccessful:
        _print_session_hint(session)
        return
    jobs = client.list(states=unsuccessful, ids=ids, limit=LIST_MAX + 1)
    for job in jobs[:LIST_MAX]:
        print(f"  {describe(job)}")
    more = sum(counts[s] for s in unsuccessful) - LIST_MAX
    if more > 0:
        print(f"  … and {more} more: {_ls_hint(session, unsuccessful)}")
    if session is None:
        _print_stderr_tails(client, [j for j in jobs if j.state is JobState.FAILED])
    _print_session_hint(session)


def describe(job: JobRecord) -> str:
    """`job 18 (index 17): failed, exit code 1`"""
    where = (
        f"job {job.id}" if job.array_index is None else f"job {job.id} (index {job.array_index})"
    )
    how = exit_text(job.exit_code, job.reason)
    return f"{where}: {job.state.value}" + (f", {how}" if how else "")


def _ls_hint(session: Path | None, states: Sequence[JobState]) -> str:
    if session is None:
        return "the temporary session is gone; keep one with `clobi run --session DIR`"
    flags = " ".join(f"--state {s.value}" for s in states)
    return f"clobi ls --session {shlex.quote(str(session))} {flags} --limit 1000"


def _print_session_hint(session: Path | None) -> None:
    if session is not None:
        where = shlex.quote(str(session))
        print(
            f"session kept in {where}: clobi ls --session {where}; "
            f"clobi output --session {where} JOB --to DIR"
        )


def _print_stderr_tails(client: Client, failed: Sequence[JobRecord]) -> None:
    shown = 0
    for job in failed:
        if shown == STDERR_JOBS:
            return
        tail = _stderr_tail(client, job.id)
        if tail:
            print(f"--- last lines of stderr of {describe(job)} ---")
            print("\n".join(tail))
            shown += 1


def _stderr_tail(client: Client, job_id: int) -> list[str]:
    try:
        data = client.read_output_file(job_id, "stderr")
    except NotFound:
        return []
    return data.decode("utf-8", "replace").rstrip("\n").splitlines()[-STDERR_LINES:]
