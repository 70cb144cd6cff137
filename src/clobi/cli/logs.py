"""`clobi logs` and `clobi output`: a job's stdout/stderr, and its whole output."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from clobi.cli import output
from clobi.cli.exitcodes import ExitCode


def register(subparsers: Any) -> None:
    logs = subparsers.add_parser("logs", help="print a job's stdout (or stderr)")
    output.add_session(logs)
    logs.add_argument("job", metavar="JOB", type=output.job_id)
    logs.add_argument("--stderr", action="store_true", help="print stderr instead of stdout")
    logs.add_argument(
        "--follow", "-f", action="store_true", help="keep printing until the job has finished"
    )
    logs.set_defaults(func=logs_cmd)

    out = subparsers.add_parser("output", help="extract a job's output files into a folder")
    output.add_session(out)
    out.add_argument("job", metavar="JOB", type=output.job_id)
    out.add_argument(
        "--to",
        metavar="DIR",
        type=Path,
        required=True,
        help="the folder to extract into (created if missing)",
    )
    out.set_defaults(func=output_cmd)


def logs_cmd(args: argparse.Namespace) -> int:
    stream = "stderr" if args.stderr else "stdout"
    sink = sys.stdout.buffer
    with output.open_client(args) as client:
        client.get(args.job)  # NotFound before anything else
        for chunk in client.logs(args.job, stream, follow=args.follow):
            sink.write(chunk)
            sink.flush()
    return ExitCode.OK


def output_cmd(args: argparse.Namespace) -> int:
    with output.open_client(args) as client:
        names = client.output(args.job, args.to)
    for name in names:
        print(name)
    return ExitCode.OK
