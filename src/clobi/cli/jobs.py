"""`clobi submit`, `clobi ls` and `clobi show`: create jobs and look at them.

The commands that act on existing jobs (kill, rm, retry, wait) are in `jobctl`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clobi.cli import output, specflags
from clobi.cli.exitcodes import ExitCode
from clobi.errors import UsageError

if TYPE_CHECKING:
    from clobi.client import JobView
    from clobi.model.records import AttemptRecord, JobRecord
    from clobi.model.spec import JobSpec

SHOW_IDS_MAX = 10  # more ids than this are summarised as ranges on a terminal


def register(subparsers: Any) -> None:
    submit = subparsers.add_parser(
        "submit",
        help="submit jobs from a spec file or a command",
        usage="clobi submit [options] FILE\n       clobi submit [options] -- CMD …",
    )
    output.add_session(submit)
    submit.add_argument(
        "file",
        metavar="FILE",
        nargs="?",
        type=Path,
        help="a job spec (.toml, .yaml, .json); inputs are relative to its folder",
    )
    submit.add_argument(
        "--idempotency-key",
        metavar="K",
        help="submitting again with the same key returns the first submit's ids",
    )
    output.add_json(submit)
    specflags.add_spec_flags(submit)
    submit.set_defaults(func=submit_cmd, takes_command=True)

    ls = subparsers.add_parser("ls", help="list jobs")
    output.add_session(ls)
    ls.add_argument(
        "--state",
        dest="states",
        action="append",
        default=[],
        type=output.state_name,
        metavar="S",
        help="only jobs in state S (repeatable)",
    )
    ls.add_argument(
        "--tag",
        dest="tags",
        action="append",
        default=[],
        metavar="T",
        help="only jobs with tag T (repeatable; all must match)",
    )
    ls.add_argument(
        "--limit",
        type=output.positive_int,
        default=100,
        metavar="N",
        help="at most N jobs (default 100)",
    )
    ls.add_argument(
        "--after",
        type=output.job_id,
        default=0,
        metavar="ID",
        help="only jobs with ids above ID (to page)",
    )
    output.add_json(ls)
    ls.set_defaults(func=ls_cmd)

    show = subparsers.add_parser("show", help="one job: spec, state and attempts")
    output.add_session(show)
    show.add_argument("job", metavar="JOB", type=output.job_id)
    output.add_json(show)
    show.set_defaults(func=show_cmd)


# --- submit ------------------------------------------------------------------------------
def submit_cmd(args: argparse.Namespace) -> int:
    spec, base_dir = _spec(args)
    with output.open_client(args) as client:
        ids = client.submit(spec, base_dir=base_dir, idempotency_key=args.idempotency_key)
    if args.json:
        output.print_json({"ids": ids})
    elif len(ids) > SHOW_IDS_MAX and sys.stdout.isatty():
        print(f"submitted {len(ids)} jobs: {output.id_ranges(ids)}")
    else:
        print("\n".join(str(i) for i in ids))
    return ExitCode.OK


def _spec(args: argparse.Namespace) -> tuple[JobSpec, Path | None]:
    if args.file is not None and args.command is not None:
        raise UsageError("submit: give a spec FILE or `-- CMD`, not both")
    if args.file is not None:
        used = specflags.spec_flags_used(args)
        if used:
            raise UsageError(
                f"submit: {', '.join(used)} only apply to `-- CMD`; put them in {args.file} instead"
            )
        from clobi.specfile import load_spec_file

        return load_spec_file(args.file)
    if not args.command:
        raise UsageError(
            "submit: give a spec FILE or a command after `--`, "
            "e.g. clobi submit -n 3 -- echo {index}"
        )
    return specflags.spec_from_args(args, args.command), None


# --- ls ----------------------------------------------------------------------------------
def ls_cmd(args: argparse.Namespace) -> int:
    with output.open_client(args) as client:
        jobs = client.list(
            states=args.states, tags=args.tags, limit=args.limit, after_id=args.after
        )
    if args.json:
        output.print_json([output.job_dict(j) for j in jobs])
        return ExitCode.OK
    if not jobs:
        print("no jobs", file=sys.stderr)
        return ExitCode.OK
    now = time.time()
    output.print_table(
        ("id", "name", "index", "state", "priority", "attempts", "exit", "reason", "age"),
        (_row(j, now) for j in jobs),
    )
    if len(jobs) == args.limit:
        print(f"(first {args.limit}; more with --after {jobs[-1].id})", file=sys.stderr)
    return ExitCode.OK


def _row(job: JobRecord, now: float) -> tuple[object, ...]:
    return (
        job.id,
        job.name,
        job.array_index,
        job.state.value,
        job.priority,
        job.attempts,
        job.exit_code,
        job.reason,
        output.fmt_age(job.created_at, now),
    )


# --- show --------------------------------------------------------------------------------
def show_cmd(args: argparse.Namespace) -> int:
    with output.open_client(args) as client:
        view = client.get(args.job)
    if args.json:
        output.print_json(
            {
                "job": output.job_dict(view.job),
                "spec": output.plain(view.spec),
                "input_sha256": view.input_sha256,
                "attempts": [output.plain(a) for a in view.attempts],
            }
        )
        return ExitCode.OK
    output.print_fields(_job_fields(view))
    if view.attempts:
        print()
        output.print_table(
            ("attempt", "agent", "state", "start", "end", "duration", "exit", "reason"),
            (_attempt_row(a) for a in view.attempts),
        )
    return ExitCode.OK


def _job_fields(view: JobView) -> list[tuple[str, object]]:
    import shlex

    from clobi.model.units import format_duration

    job, spec = view.job, view.spec
    walltime = spec.resources.walltime_s
    return [
        ("job", job.id),
        ("name", job.name),
        ("array index", job.array_index),
        ("state", job.state.value),
        ("exit", output.exit_text(job.exit_code, job.reason)),
        ("command", spec.command[0] if spec.shell else shlex.join(spec.command)),
        ("priority", job.priority),
        ("tags", ", ".join(job.tags)),
        ("cpus", spec.resources.cpus),
        ("walltime", "" if walltime is None else format_duration(walltime)),
        ("attempts", job.attempts),
        ("retries left", job.retries_left),
        ("lost", job.lost_count),
        ("owner", job.owner),
        ("created", output.fmt_time(job.created_at)),
        ("updated", output.fmt_time(job.updated_at)),
    ]


def _attempt_row(a: AttemptRecord) -> tuple[object, ...]:
    from clobi.model.units import format_duration

    duration = None if a.ended_at is None else format_duration(a.ended_at - a.started_at)
    return (
        a.id,
        a.agent_name or a.agent_id,
        a.state.value,
        output.fmt_time(a.started_at),
        output.fmt_time(a.ended_at),
        duration,
        a.exit_code,
        a.reason,
    )
