"""`clobi ui`: the web dashboard of a session directory, served on this machine.

It serves the same app as `clobi server` (the dashboard at `/`, the API beside it) on
127.0.0.1 and a free port by default, and prints a one-time login link: the link's code is
spent by the first browser that opens it and expires after ten minutes. The admin token
behind it is made for this run and revoked when it stops (else it expires within a day).
"""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from clobi.cli import output
from clobi.cli.exitcodes import ExitCode
from clobi.errors import MissingExtra, SessionError, UsageError

DEFAULT_BIND = "127.0.0.1:0"
TOKEN_EXPIRES_S = 24 * 3600.0


def register(subparsers: Any) -> None:
    ui = subparsers.add_parser(
        "ui",
        help="open the web dashboard of a session on this machine",
        description="Serve the web dashboard of a session directory and print a one-time "
        "login link. For a shared session, open its server's URL in a browser instead.",
    )
    output.add_session(ui)
    ui.add_argument(
        "--bind",
        metavar="HOST:PORT",
        default=DEFAULT_BIND,
        help=f"where to listen (default {DEFAULT_BIND}: this machine only, a free port)",
    )
    ui.add_argument("--open", action="store_true", help="open the login link in a browser")
    ui.set_defaults(func=ui_cmd)


def ui_cmd(args: argparse.Namespace) -> int:
    from clobi.cli.server_cmd import parse_bind
    from clobi.session import find_session

    host, port = parse_bind(args.bind)
    session = find_session(getattr(args, "session", None))
    if session.credentials is not None:
        raise UsageError("ui: serves a session directory; open a server's URL in a browser")
    try:
        import uvicorn

        from clobi.api.app import create_app, stop_long_polls
        from clobi.api.ui import login_code
    except ImportError as exc:
        raise MissingExtra(f"`clobi ui` needs `pip install clobi[server]` ({exc})") from None
    from clobi.auth import issue, token_id_of
    from clobi.model.auth import Role

    store, sandbox = session.open_store(), session.open_sandbox()
    token = issue(store, Role.ADMIN, f"ui-{_user()}", expires_s=TOKEN_EXPIRES_S)
    try:
        app = create_app(store, sandbox, session.settings)
        app.state.session_root = session.root
        sock = _listen(host, port)
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        link = f"http://{shown}:{bound_port}/ui/login/once?code={login_code(app, token)}"
        _announce(session.root, link, bound_host)
        if args.open:
            import webbrowser

            webbrowser.open(link)
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
        server = _server(uvicorn, config, lambda: stop_long_polls(app))
        # uvicorn re-raises the signal that stopped it: let SIGTERM end in an exception, as
        # SIGINT does, so that the token is revoked below.
        signal.signal(signal.SIGTERM, _terminated)
        server.run(sockets=[sock])
    finally:
        token_id = token_id_of(token)
        if token_id is not None:
            store.revoke_token(token_id)
        store.close()
    return ExitCode.OK


def _announce(root: object, link: str, host: str) -> None:
    print(f"clobi ui: the dashboard of {root}", file=sys.stderr)
    if host not in ("127.0.0.1", "::1", "localhost"):
        print(
            f"clobi ui: warning: listening on {host} without TLS; anyone who can reach it "
            "sees the login page (use 127.0.0.1 and an SSH tunnel, or clobi server with TLS)",
            file=sys.stderr,
        )
    print(f"clobi ui: log in once with {link}", file=sys.stderr, flush=True)


def _terminated(sig: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + sig)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP so that asyncio sets TCP_NODELAY (see `clobi server`)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SessionError(f"ui: cannot listen on {host}:{port}: {exc}") from None
    sock.listen(128)
    return sock


def _server(uvicorn: Any, config: Any, on_exit: Callable[[], None]) -> Any:
    """uvicorn's server, ending the live streams as soon as it is asked to stop."""

    class Server(uvicorn.Server):  # type: ignore[misc]
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            on_exit()
            super().handle_exit(sig, frame)

    return Server(config)
