"""The job spec flags `clobi run` and `clobi submit -- CMD` share."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from clobi.errors import UsageError

if TYPE_CHECKING:
    from clobi.model.spec import ArraySpec, JobSpec

# dest -> the flag a user wrote, for "this flag needs `-- CMD`" messages
FLAGS = {
    "count": "-n",
    "array": "--array",
    "cpus": "--cpus",
    "retries": "--retries",
    "outputs": "--outputs",
    "name": "--name",
    "priority": "--priority",
    "walltime": "--walltime",
    "tags": "--tag",
    "env": "--env",
}


def add_spec_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("job spec (for the `-- CMD` form)")
    many = group.add_mutually_exclusive_group()
    many.add_argument(
        "-n",
        dest="count",
        type=int,
        metavar="N",
        help="run N jobs, indices 0..N-1 ({index} in CMD, $CLOBI_ARRAY_INDEX)",
    )
    many.add_argument(
        "--array",
        metavar="SPEC",
        help="'10' for 10 jobs, or 'a,b,c' for one job per value ({value} in CMD)",
    )
    group.add_argument("--cpus", type=float, metavar="C", help="cpus each job needs (default 1)")
    group.add_argument(
        "--retries", type=int, metavar="R", help="run a failed job up to R more times"
    )
    group.add_argument(
        "--outputs",
        nargs="+",
        action="extend",
        default=[],
        metavar="GLOB",
        help="files to keep besides stdout and stderr",
    )
    group.add_argument("--name", default="", help="a name for the job(s)")
    group.add_argument(
        "--priority", type=int, default=0, metavar="P", help="higher runs first (default 0)"
    )
    group.add_argument("--walltime", metavar="W", help="kill a job after W, e.g. '90s', '2h'")
    group.add_argument(
        "--tag",
        dest="tags",
        action="append",
        default=[],
        metavar="T",
        help="a tag to find the jobs by (repeatable)",
    )
    group.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="K=V",
        help="an environment variable for the job (repeatable)",
    )


def spec_flags_used(args: argparse.Namespace) -> list[str]:
    """The spec flags given on the command line (they differ from their defaults)."""
    defaults = {"outputs": [], "name": "", "priority": 0, "tags": [], "env": []}
    return [flag for dest, flag in FLAGS.items() if getattr(args, dest) != defaults.get(dest)]


def spec_from_args(args: argparse.Namespace, command: list[str]) -> JobSpec:
    """Build and validate the spec of `-- CMD` and the flags; raises `SpecError`."""
    from clobi.specfile import spec_from_command

    return spec_from_command(
        command,
        name=args.name,
        array=_array(args),
        cpus=args.cpus,
        retries=args.retries,
        outputs=args.outputs,
        priority=args.priority,
        walltime=args.walltime,
        tags=args.tags,
        env=_env(args.env),
    )


def _array(args: argparse.Namespace) -> ArraySpec | None:
    from clobi.model.spec import ArraySpec
    from clobi.model.specparse import parse_array_flag

    if args.count is not None:
        return ArraySpec(count=args.count)
    if args.array is None:
        return None
    try:
        return parse_array_flag(args.array)
    except ValueError as exc:
        raise UsageError(f"--array: {exc}") from None


def _env(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--env: expected K=V, not {pair!r}")
        env[key] = value
    return env
