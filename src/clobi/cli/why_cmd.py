"""`clobi why JOB`: why a job is still queued, and what the manager last decided about it."""

from __future__ import annotations

import argparse
import time
from typing import Any

from clobi.cli import output
from clobi.cli.exitcodes import ExitCode


def register(subparsers: Any) -> None:
    why = subparsers.add_parser("why", help="why a job is still queued")
    output.add_session(why)
    why.add_argument("job", metavar="JOB", type=output.job_id)
    output.add_json(why)
    why.set_defaults(func=why_cmd)


def why_cmd(args: argparse.Namespace) -> int:
    with output.open_client(args) as client:
        if client.session.credentials is not None:
            answer = client.store.connection.call(  # type: ignore[attr-defined]
                "GET", f"/jobs/{args.job}/why", idempotent=True
            )
            lines = [str(line) for line in answer["lines"]]
        else:
            from clobi.manager.control import why_job

            lines = why_job(client.session.root, client.store, args.job, time.time())
    if args.json:
        output.print_json({"job": args.job, "lines": lines})
    else:
        for line in lines:
            print(output.safe_text(line))
    return ExitCode.OK
