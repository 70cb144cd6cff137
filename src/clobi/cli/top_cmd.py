"""`clobi top`: the interactive console of a session (the `console` extra: textual)."""

from __future__ import annotations

import argparse
from typing import Any

from clobi.cli import output
from clobi.cli.exitcodes import ExitCode
from clobi.errors import MissingExtra, UsageError


def register(subparsers: Any) -> None:
    top = subparsers.add_parser(
        "top",
        help="watch and steer the queue, the pools and the manager, live",
        description="An interactive console: the queue by priority, every pool with its "
        "instances and agents, and the manager's decisions, refreshed every second. Keys: "
        "+/- change the selected pool's max (written to clobi.toml), d drains (soft kill) the "
        "selected pool or instance, k hard-kills it (asks first), q quits.",
    )
    output.add_session(top)
    top.set_defaults(func=top_cmd)


def top_cmd(args: argparse.Namespace) -> int:
    from clobi.session import find_session

    session = find_session(getattr(args, "session", None))
    if session.credentials is not None:
        raise UsageError(
            "clobi top runs where the session's clobi.toml is: run it on the server's machine "
            "with --session DIR"
        )
    try:
        from clobi.console.app import ConsoleApp
    except ImportError as exc:
        if (exc.name or "").split(".")[0] != "textual":
            raise
        raise MissingExtra("`clobi top` needs textual: `pip install 'clobi[console]'`") from None
    from clobi.console.backend import Backend

    backend = Backend(session)
    try:
        ConsoleApp(backend).run()
    finally:
        backend.close()
    return ExitCode.OK
