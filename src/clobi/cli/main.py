"""`clobi`: assemble the command groups, run one command, turn errors into exit codes.

Errors are printed as `clobi: error: <message>` without a traceback; unexpected exceptions
are `clobi: internal error: …` and show their traceback with CLOBI_DEBUG=1.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

from clobi import __version__
from clobi.cli import agent_cmd, jobctl, jobs, logs, run, server_cmd, session_cmd, token_cmd
from clobi.cli.exitcodes import ExitCode, exit_code_for
from clobi.errors import ClobiError, UsageError

Handler = Callable[[argparse.Namespace], int]


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors go through `main`'s error handling (exit code USAGE)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise UsageError(message)


def build_parser() -> Parser:
    parser = Parser(prog="clobi", description="Run batch jobs on a pool of machines.")
    parser.add_argument("--version", action="version", version=f"clobi {__version__}")
    parser.add_argument(
        "--session",
        metavar="DIR",
        default=None,
        help="the session directory (default: $CLOBI_SESSION, "
        "else the nearest clobi.toml above the current directory)",
    )
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND", required=True)
    for group in (run, session_cmd, jobs, jobctl, logs, agent_cmd, server_cmd, token_cmd):
        group.register(sub)
    return parser


def split_command(argv: Sequence[str]) -> tuple[list[str], list[str] | None]:
    """Split at the first `--`: what follows is a job's command, never Clobi's options."""
    argv = list(argv)
    if "--" not in argv:
        return argv, None
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1 :]


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse a command line; `args.command` is the part after `--` (None without one)."""
    head, command = split_command(argv)
    args = build_parser().parse_args(head)
    if command is not None and not getattr(args, "takes_command", False):
        raise UsageError(f"{args.command_name}: takes no command after `--`")
    args.command = command
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run `clobi` with `argv` (default: sys.argv[1:]); return its exit code."""
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
        handler: Handler = args.func
        return int(handler(args))
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    except KeyboardInterrupt:
        print("clobi: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()  # the reader went away (`clobi ls | head`); nothing left to say
        return ExitCode.OK
    except (ClobiError, TimeoutError) as exc:
        print(f"clobi: error: {_message(exc)}", file=sys.stderr)
        return exit_code_for(exc)
    except Exception as exc:
        return _internal_error(exc)


def _message(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, ClobiError) else str(exc)
    cause = exc.__cause__
    while cause is not None:  # the chain of causes, not a traceback
        text += f"\n  caused by: {cause}"
        cause = cause.__cause__
    return text


def _internal_error(exc: Exception) -> int:
    if os.environ.get("CLOBI_DEBUG"):
        traceback.print_exc()
    print(f"clobi: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
    if not os.environ.get("CLOBI_DEBUG"):
        print(
            "clobi: rerun with CLOBI_DEBUG=1 to see the traceback, and please report it",
            file=sys.stderr,
        )
    return ExitCode.INTERNAL


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
