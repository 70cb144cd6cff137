"""`clobi run`: submit a command (or an array of it), run it on local agents, wait, report.

Without `--session` the run uses a temporary session that is deleted at the end (`--to DIR`
keeps the outputs); with `--session DIR` the session is created if missing and kept, so
`clobi ls/show/output --session DIR` work afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clobi.cli import output, specflags
from clobi.cli.exitcodes import ExitCode
from clobi.errors import UsageError
from clobi.model.states import JobState

if TYPE_CHECKING:
    from clobi.cli.runagents import LocalAgents
    from clobi.client import Client
    from clobi.model.spec import JobSpec
    from clobi.session import Session, Settings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a command as jobs on this machine and wait for them",
        usage="clobi run [options] -- CMD …",
        description="Submit CMD (N times with -n N), run it on local agents with a progress "
        "bar, wait, and print a summary. Exits 0 when every job succeeded.",
        epilog="example: clobi run -n 100 -- ./simulate.sh {index}",
    )
    parser.add_argument(
        "--session",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="run in this session, created if missing and kept afterwards "
        "(default: a temporary session, deleted at the end)",
    )
    parser.add_argument(
        "--agents",
        type=output.positive_int,
        default=None,
        metavar="K",
        help="local agent processes to start (default: one per job that fits the machine at "
        "once, up to the number of cpus)",
    )
    parser.add_argument(
        "--to", type=Path, metavar="DIR", help="extract every job's output into DIR/<job id>/"
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    specflags.add_spec_flags(parser)
    parser.set_defaults(func=run_cmd, takes_command=True)


def run_cmd(args: argparse.Namespace) -> int:
    if not args.command:
        raise UsageError("run: give the command after `--`, e.g. clobi run -n 3 -- echo {index}")
    spec = specflags.spec_from_args(args, args.command)  # a bad spec creates no session
    with _session(getattr(args, "session", None)) as (session, temporary):
        return _run(session, spec, args, temporary)


@contextlib.contextmanager
def _session(explicit: str | None) -> Iterator[tuple[Session, bool]]:
    """The run's session and whether it is temporary (deleted on the way out)."""
    from clobi.session import init_session

    if explicit:
        yield init_session(Path(explicit)), False
        return
    root = Path(tempfile.mkdtemp(prefix="clobi-run-"))
    try:
        yield init_session(root), True
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(session: Session, spec: JobSpec, args: argparse.Namespace, temporary: bool) -> int:
    from clobi.cli import runreport
    from clobi.cli.runagents import LocalAgents, agent_shares, machine_cpus
    from clobi.client import Client

    with Client(session) as client:
        ids = client.submit(spec)
        count, cpus = agent_shares(machine_cpus(), spec.resources.cpus, args.agents)
        agents = LocalAgents(session.root, count, cpus)
        try:
            agents.start()
            counts = _wait(client, ids, agents, quiet=args.quiet)
        except KeyboardInterrupt:
            client.kill(ids)  # before the agents drain, so they stop the run's jobs
            print("clobi: killed the run's unfinished jobs", file=sys.stderr)
            raise
        finally:
            codes = agents.stop(_stop_timeout_s(session.settings))
        if all(code == 0 for code in codes):
            agents.remove_logs()
        if args.to is not None:
            runreport.extract_outputs(client, ids, args.to)
        runreport.summary(client, ids, counts, session=None if temporary else session.root)
    return ExitCode.OK if counts[JobState.SUCCEEDED] == len(ids) else ExitCode.JOBS_FAILED


def _wait(
    client: Client, ids: list[int], agents: LocalAgents, *, quiet: bool
) -> dict[JobState, int]:
    from clobi.cli.runprogress import RunProgress

    with RunProgress(len(ids), quiet=quiet) as progress:

        def on_progress(counts: dict[JobState, int]) -> None:
            progress.update(counts)
            agents.check()

        return client.wait(ids, on_progress=on_progress)


def _stop_timeout_s(settings: Settings) -> float:
    # Long enough for a drained agent to see a kill at its next heartbeat and stop the job.
    return settings.kill_grace_s + 2 * settings.heartbeat_s + 5.0
