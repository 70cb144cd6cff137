"""`clobi server`: serve a session over HTTP(S) for remote users and agents.

Settings come from flags, else `CLOBI_*` environment variables, else the session
(`--session DIR`, `$CLOBI_SESSION` or the nearest clobi.toml). With `--db` and `--storage`
no session directory is needed. `--bind HOST:0` picks a free port; the address actually served
is printed on stderr as `clobi server: listening on URL`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from clobi.cli import output
from clobi.cli.exitcodes import ExitCode
from clobi.errors import MissingExtra, SessionError, UsageError

if TYPE_CHECKING:
    from clobi.outlets.runner import OutletThread
    from clobi.session import Session

DEFAULT_BIND = "127.0.0.1:8765"


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Where and how `clobi server` listens, and which engines it serves."""

    host: str
    port: int
    db: str | None = None
    storage: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"


def register(subparsers: Any) -> None:
    server = subparsers.add_parser(
        "server",
        help="serve a session over HTTP(S) to remote users and agents",
        description="Serve a session's jobs, sandboxes and agents over HTTP(S). Every flag "
        "also reads from the environment: CLOBI_DB, CLOBI_STORAGE, CLOBI_BIND, "
        "CLOBI_TLS_CERT, CLOBI_TLS_KEY.",
    )
    output.add_session(server)
    server.add_argument("--db", metavar="URL", help="the store (default: the session's)")
    server.add_argument(
        "--storage", metavar="URL", help="the sandbox store (default: the session's)"
    )
    server.add_argument(
        "--bind", metavar="HOST:PORT", help=f"where to listen (default {DEFAULT_BIND})"
    )
    server.add_argument("--tls-cert", metavar="FILE", type=Path, help="TLS certificate (PEM)")
    server.add_argument("--tls-key", metavar="FILE", type=Path, help="TLS private key (PEM)")
    server.add_argument(
        "--access-log",
        action="store_true",
        help="log every request (off by default: it costs the server CPU on every call)",
    )
    server.add_argument(
        "--public-url",
        metavar="URL",
        help="the URL machines started by the resource manager join (default: where it listens)",
    )
    server.add_argument(
        "--no-manager",
        action="store_true",
        help="do not run the resource manager here (it runs when clobi.toml declares pools)",
    )
    server.set_defaults(func=server_cmd)


def server_config(args: argparse.Namespace, environ: Mapping[str, str]) -> ServerConfig:
    """Flags first, then `CLOBI_*` variables, then defaults."""

    def pick(flag: Any, name: str) -> Any:
        return flag if flag is not None else environ.get(f"CLOBI_{name}") or None

    host, port = parse_bind(pick(args.bind, "BIND") or DEFAULT_BIND)
    cert, key = pick(args.tls_cert, "TLS_CERT"), pick(args.tls_key, "TLS_KEY")
    if (cert is None) != (key is None):
        raise UsageError("server: give both --tls-cert and --tls-key, or neither")
    return ServerConfig(
        host=host,
        port=port,
        db=pick(args.db, "DB"),
        storage=pick(args.storage, "STORAGE"),
        tls_cert=None if cert is None else Path(cert),
        tls_key=None if key is None else Path(key),
    )


def parse_bind(text: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 hosts in brackets) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--bind: {text!r}: expected HOST:PORT, e.g. {DEFAULT_BIND}")
    return host.strip("[]") or "127.0.0.1", int(port)


def server_cmd(args: argparse.Namespace) -> int:
    config = server_config(args, os.environ)
    session = served_session(getattr(args, "session", None), config)
    try:
        import uvicorn

        from clobi.api.app import create_app, stop_long_polls
    except ImportError as exc:
        raise MissingExtra(f"`clobi server` needs `pip install clobi[server]` ({exc})") from None
    _setup_logging()
    store, sandbox = session.open_store(), session.open_sandbox()
    try:
        app = create_app(store, sandbox, session.settings)
        if session.credentials is None:
            app.state.session_root = session.root  # its clobi.toml declares the pools
        sock = _listen(config)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(
            f"clobi server: listening on {config.scheme}://{shown}:{port}",
            file=sys.stderr,
            flush=True,
        )
        public = args.public_url or _public_url(config.scheme, host, port)
        outlets = _start_outlets(session)
        manager = None if args.no_manager else _start_manager(session, public)
        uvicorn_config = uvicorn.Config(
            app,
            ssl_certfile=config.tls_cert,
            ssl_keyfile=config.tls_key,
            log_level="info",
            access_log=bool(getattr(args, "access_log", False)),
            timeout_graceful_shutdown=5,
        )
        try:
            server = _server_class(uvicorn)(uvicorn_config, lambda: stop_long_polls(app))
            server.run(sockets=[sock])
        finally:
            if manager is not None:
                manager.stop()
            if outlets is not None:
                outlets.stop()
    finally:
        store.close()
    return ExitCode.OK


def _public_url(scheme: str, host: str, port: int) -> str:
    if host in ("0.0.0.0", "::"):
        host = socket.getfqdn()
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


class _ManagerThread:
    """The resource manager beside the server, in a thread of its own with its own store
    connection (one manager is active per session: the store's lock elects it)."""

    def __init__(self, session: Session, url: str) -> None:
        from clobi.manager.loop import Manager, join_info

        self.store = session.open_store()
        self.manager = Manager(session, self.store, join_info(session, self.store, url))
        self.stopping = threading.Event()
        self.thread = threading.Thread(
            target=self.manager.run, args=(self.stopping,), name="clobi-manager", daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)
        self.store.close()


def _start_manager(session: Session, url: str) -> _ManagerThread | None:
    """Run the manager when the session's clobi.toml declares pools."""
    from clobi.manager.config import read_pools
    from clobi.session import CONFIG_NAME

    if session.credentials is not None or not read_pools(session.root / CONFIG_NAME).pools:
        return None
    print(f"clobi server: running the resource manager; machines join {url}", file=sys.stderr)
    return _ManagerThread(session, url)


def _start_outlets(session: Session) -> OutletThread | None:
    """Deliver events to the outlets the session's clobi.toml declares ([events]), if any."""
    from clobi.outlets.runner import start_outlets

    outlets = start_outlets(session)
    if outlets is not None:
        names = ", ".join(o.name for o in outlets.runner.outlets)
        print(f"clobi server: delivering events to {names}", file=sys.stderr)
    return outlets


def served_session(explicit: str | None, config: ServerConfig) -> Session:
    """The session to serve: found as usual, with `--db`/`--storage` replacing its engines;
    both flags together need no session directory."""
    from clobi.session import Session, find_session

    try:
        session = find_session(explicit)
    except SessionError:
        if explicit or not (config.db and config.storage):
            raise
        return Session(root=Path.cwd(), store_url=config.db, sandbox_url=config.storage)
    if session.credentials is not None:
        raise UsageError("server: serve a session directory or --db/--storage, not a URL")
    return dataclasses.replace(
        session,
        store_url=config.db or session.store_url,
        sandbox_url=config.storage or session.sandbox_url,
    )


def _listen(config: ServerConfig) -> socket.socket:
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it every response on a kept-alive connection waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError as exc:
        sock.close()
        raise SessionError(f"server: cannot listen on {config.host}:{config.port}: {exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _server_class(uvicorn: Any) -> Any:
    class Server(uvicorn.Server):  # type: ignore[misc]
        """uvicorn's server, ending long-polls as soon as it is asked to stop."""

        def __init__(self, config: Any, on_exit: Callable[[], None]) -> None:
            super().__init__(config)
            self.on_exit = on_exit

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            self.on_exit()
            super().handle_exit(sig, frame)

    return Server


def _setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
