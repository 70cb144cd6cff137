"""`clobi`: assemble the command groups, run one command, turn errors into exit codes.

Errors are printed as `clobi: error: <message>` without a traceback; unexpected exceptions
are `clobi: internal error: …` and show their traceback with CLOBI_DEBUG=1.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn

from clobi import __version__
from clobi.cli.exitcodes import ExitCode, exit_code_for
from clobi.errors import ClobiError, UsageError

Handler = Callable[[argparse.Namespace], int]

# The command groups (modules of `clobi.cli`) in the order `clobi --help` lists them, with the
# commands each one registers (a unit test holds this table to what `register` adds). A command
# line naming one of these commands imports and registers only its group: `clobi ls` should not
# pay for the server's imports nor build every other command's parser.
GROUPS: dict[str, tuple[str, ...]] = {
    "run": ("run",),
    "session_cmd": ("session",),
    "jobs": ("submit", "ls", "show"),
    "jobctl": ("kill", "rm", "retry", "wait"),
    "logs": ("logs", "output"),
    "agent_cmd": ("agent", "agents", "events"),
    "server_cmd": ("server",),
    "token_cmd": ("token", "login"),
    "pool_cmd": ("pool", "instances", "manager"),
    "outlets_cmd": ("outlets",),
    "why_cmd": ("why",),
    "ui_cmd": ("ui",),
    "top_cmd": ("top",),
}


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors go through `main`'s error handling (exit code USAGE)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise UsageError(message)


def build_parser(command: str | None = None) -> Parser:
    """The parser of every command, or only of `command`'s group when one is named."""
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
    for group, commands in GROUPS.items():
        if command is None or command in commands:
            importlib.import_module(f"clobi.cli.{group}").register(sub)
    return parser


def command_name(head: Sequence[str]) -> str | None:
    """The command a command line names, when that is plain without parsing: the first word
    after the global options. None when an option argparse must see comes first (`--help`,
    `--version`, an abbreviation, a mistake) or the word is no command: then every command's
    parser is built and argparse answers as always."""
    words: Iterator[str] = iter(head)
    for word in words:
        if word == "--session":
            next(words, None)
        elif not word.startswith("--session="):
            known = not word.startswith("-") and any(word in c for c in GROUPS.values())
            return word if known else None
    return None


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
    args = build_parser(command_name(head)).parse_args(head)
    if command is not None and not getattr(args, "takes_command", False):
        raise UsageError(f"{args.command_name}: takes no command after `--`")
    args.command = command
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run `clobi` with `argv` (default: sys.argv[1:]); return its exit code."""
    try:
        with _startup(own_process=argv is None):
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


@contextlib.contextmanager
def _startup(own_process: bool) -> Iterator[None]:
    """Load the command without cyclic garbage collection.

    Start-up makes tens of thousands of objects that live as long as the process (modules,
    classes, functions) and next to no garbage; collecting meanwhile walks them again and again
    (~5 ms of a `clobi ls`). When this is the process's own command, what start-up made is then
    frozen (`gc.freeze`) so that later collections skip it too; a caller's process is left as
    it was.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if own_process:
            gc.freeze()
        if was_enabled:
            gc.enable()


def _message(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, ClobiError) else str(exc)
    cause = exc.__cause__
    while cause is not None:  # the chain of causes, not a traceback
        text += f"\n  caused by: {cause}"
        cause = cause.__cause__
    return text


def _internal_error(exc: Exception) -> int:
    if os.environ.get("CLOBI_DEBUG"):
        import traceback

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
