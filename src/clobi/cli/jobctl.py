"""`clobi kill`, `clobi rm`, `clobi retry` and `clobi wait`: act on existing jobs.

Every id is checked first, so a typo fails the whole command (NOT_FOUND) before anything
is changed. Jobs whose state does not allow the action are named and give CONFLICT.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from clobi.cli import output
from clobi.cli.exitcodes import ExitCode
from clobi.errors import UsageError
from clobi.model.states import JobState

if TYPE_CHECKING:
    from clobi.client import Client

# action -> (what happened, which states allow it)
_ACTIONS = {
    "kill": ("killed", "queued or running"),
    "rm": ("removed", "queued or finished"),
    "retry": ("requeued", "failed, timed_out or cancelled"),
}


def register(subparsers: Any) -> None:
    kill = _ids_parser(subparsers, "kill", "cancel jobs (running ones are stopped)", nargs="*")
    kill.add_argument(
        "--state",
        type=output.state_name,
        metavar="S",
        help="kill every job in state S (queued or running)",
    )
    kill.set_defaults(func=kill_cmd)
    _ids_parser(subparsers, "rm", "delete queued or finished jobs and their outputs").set_defaults(
        func=rm_cmd
    )
    _ids_parser(subparsers, "retry", "requeue failed, timed-out or cancelled jobs").set_defaults(
        func=retry_cmd
    )

    wait = _ids_parser(
        subparsers, "wait", "wait until jobs (default: all) have finished", nargs="*"
    )
    wait.add_argument(
        "--timeout",
        metavar="S",
        type=_duration,
        help="give up after S (seconds, or e.g. '10m'); exit code 9",
    )
    wait.set_defaults(func=wait_cmd)


def _ids_parser(subparsers: Any, name: str, help_text: str, nargs: str = "+") -> Any:
    parser = subparsers.add_parser(name, help=help_text)
    output.add_session(parser)
    parser.add_argument("jobs", metavar="JOB", type=output.job_id, nargs=nargs)
    return parser


def _duration(text: str) -> float:
    from clobi.model.units import parse_duration_s

    try:
        return parse_duration_s(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def kill_cmd(args: argparse.Namespace) -> int:
    if bool(args.jobs) == (args.state is not None):
        raise UsageError("kill: give job ids or --state S (not both)")
    if args.state is not None and args.state not in (JobState.QUEUED, JobState.RUNNING):
        raise UsageError(f"kill: only queued or running jobs can be killed, not {args.state}")
    with output.open_client(args) as client:
        if args.state is not None:
            _print_ids(client.kill_state(args.state))
            return ExitCode.OK
        return _act(client, "kill", args.jobs, client.kill)


def rm_cmd(args: argparse.Namespace) -> int:
    with output.open_client(args) as client:
        return _act(client, "rm", args.jobs, client.remove)


def retry_cmd(args: argparse.Namespace) -> int:
    with output.open_client(args) as client:
        return _act(client, "retry", args.jobs, client.retry)


def _act(
    client: Client, action: str, ids: Sequence[int], do: Callable[[Sequence[int]], list[int]]
) -> int:
    """Check the ids, act, print the ids acted on; CONFLICT names the others."""
    ids = list(dict.fromkeys(ids))
    output.require_jobs(client, ids)
    done = do(ids)
    _print_ids(done)
    skipped = [i for i in ids if i not in set(done)]
    if not skipped:
        return ExitCode.OK
    states = {j.id: j.state.value for j in client.list(ids=skipped, limit=None)}
    verb, allowed = _ACTIONS[action]
    for i in skipped:
        print(
            f"clobi: job {i}: is {states.get(i, 'gone')}, not {verb} (only {allowed} jobs can be)",
            file=sys.stderr,
        )
    return ExitCode.CONFLICT


def _print_ids(ids: Sequence[int]) -> None:
    for i in ids:
        print(i)


def wait_cmd(args: argparse.Namespace) -> int:
    with output.open_client(args) as client:
        ids: list[int] | None = list(dict.fromkeys(args.jobs)) or None
        if ids is not None:
            output.require_jobs(client, ids)
        try:
            counts = client.wait(ids, timeout_s=args.timeout)
        except TimeoutError:
            counts = client.counts(ids)
            raise TimeoutError(
                f"gave up after {args.timeout} s: {output.fmt_counts(counts)}"
            ) from None
    total = sum(counts.values())
    print(f"{total} jobs: {output.fmt_counts(counts, keep=[JobState.SUCCEEDED])}")
    return ExitCode.OK if counts[JobState.SUCCEEDED] == total else ExitCode.JOBS_FAILED
