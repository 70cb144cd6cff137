"""`clobi outlets run|ls|disable`: the event outlets (AMQP, web hooks) of clobi.toml's
`[events]` table. `clobi server` runs them too; one runner is active per session."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from clobi.cli import output
from clobi.cli.exitcodes import ExitCode
from clobi.errors import NotFound, UsageError

if TYPE_CHECKING:
    from clobi.session import Session
    from clobi.store.base import OutletStatus


def register(subparsers: Any) -> None:
    outlets = subparsers.add_parser(
        "outlets",
        help="send the session's events to RabbitMQ and web hooks",
        description="Event outlets are declared in clobi.toml ([events.amqp], "
        "[[events.webhooks]]); every event is delivered at least once, each job's in order.",
    )
    sub = outlets.add_subparsers(dest="outlets_command", metavar="ACTION", required=True)
    run = sub.add_parser(
        "run",
        help="deliver events in the foreground until stopped",
        description="Deliver the session's events to the outlets clobi.toml declares, until "
        "SIGTERM or Ctrl-C. One runner is active per session (`clobi server` runs one too); "
        "others wait and take over when it stops.",
    )
    output.add_session(run)
    run.set_defaults(func=outlets_run)
    ls = sub.add_parser("ls", help="outlets the store knows, with their backlogs")
    output.add_session(ls)
    output.add_json(ls)
    ls.set_defaults(func=outlets_ls)
    disable = sub.add_parser(
        "disable", help="stop keeping events for an outlet and drop its backlog"
    )
    output.add_session(disable)
    disable.add_argument("name", metavar="NAME", help="the outlet (see `clobi outlets ls`)")
    disable.set_defaults(func=outlets_disable)


def outlets_run(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from clobi.outlets.runner import OutletRunner, open_outlets, session_outlets

    session = _local_session(args)
    config = session_outlets(session)
    if not config.names:
        raise UsageError(
            "no outlets: declare [events.amqp] or [[events.webhooks]] in the session's clobi.toml"
        )
    logging.basicConfig(level=logging.INFO, format="clobi outlets: %(message)s")
    store = session.open_store()
    try:
        runner = OutletRunner(store, open_outlets(config))
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        runner.run(stop)
    finally:
        store.close()
    return ExitCode.OK


def outlets_ls(args: argparse.Namespace) -> int:
    store = _local_session(args).open_store()
    try:
        found = store.list_outlets()
    finally:
        store.close()
    if args.json:
        output.print_json([output.plain(s) for s in found])
    elif not found:
        print("no outlets (declare them in clobi.toml's [events] table)", file=sys.stderr)
    else:
        output.print_table(
            ("name", "state", "pending", "oldest", "tries", "next try", "last error"),
            (_row(s) for s in found),
        )
    return ExitCode.OK


def _row(s: OutletStatus) -> tuple[object, ...]:
    head = s.head
    state = "enabled" if s.enabled else "disabled"
    if head is None:
        return (s.name, state, s.pending, "", "", "", "")
    wait = head.next_try - time.time()
    return (
        s.name,
        state,
        s.pending,
        f"{output.fmt_age(head.event.ts)} ago",
        head.attempts,
        f"in {wait:.0f} s" if wait > 0 else "now",
        head.error,
    )


def outlets_disable(args: argparse.Namespace) -> int:
    store = _local_session(args).open_store()
    try:
        if args.name not in {s.name for s in store.list_outlets()}:
            raise NotFound(f"outlet {args.name!r}: no such outlet (see `clobi outlets ls`)")
        dropped = store.disable_outlet(args.name)
    finally:
        store.close()
    print(f"outlet {args.name} disabled: {dropped} waiting events dropped", file=sys.stderr)
    return ExitCode.OK


def _local_session(args: argparse.Namespace) -> Session:
    from clobi.session import find_session

    session = find_session(getattr(args, "session", None))
    if session.credentials is not None:
        raise UsageError(
            "outlets run where the session's database is: run this on the server's machine "
            "with --session DIR"
        )
    return session
