"""`clobi session init|show`: create an embedded session and look at one."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from clobi.cli import output
from clobi.cli.exitcodes import ExitCode


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("session", help="create or inspect a session")
    sub = parser.add_subparsers(dest="session_command", metavar="ACTION", required=True)

    init = sub.add_parser("init", help="create an embedded session in a directory")
    init.add_argument("dir", metavar="DIR", type=Path)
    init.set_defaults(func=init_cmd)

    show = sub.add_parser("show", help="where a session lives, its settings, jobs and agents")
    output.add_session(show)
    output.add_json(show)
    show.set_defaults(func=show_cmd)


def init_cmd(args: argparse.Namespace) -> int:
    from clobi.session import CONFIG_NAME, init_session

    existed = (args.dir / CONFIG_NAME).exists()
    session = init_session(args.dir)
    root = session.root
    print(f"{'session already exists' if existed else 'created session'}: {root}")
    print("next:")
    print(f"  export CLOBI_SESSION={_quote(str(root))}")
    print("  clobi agent &                       # run jobs on this machine")
    print("  clobi submit -n 3 -- echo {index}   # or: clobi submit job.toml")
    print("  clobi ls")
    return ExitCode.OK


def show_cmd(args: argparse.Namespace) -> int:
    with output.open_client(args) as client:
        session = client.session
        counts = client.counts()
        agents = client.agents()
    if args.json:
        output.print_json(
            {
                "root": str(session.root),
                "store": session.store_url,
                "sandbox": session.sandbox_url,
                "settings": dataclasses.asdict(session.settings),
                "counts": {state.value: n for state, n in counts.items()},
                "agents": [output.plain(a) for a in agents],
            }
        )
        return ExitCode.OK
    output.print_fields(
        [
            ("session", session.root),
            ("store", session.store_url),
            ("sandbox", session.sandbox_url),
            *((f"agent.{k}", v) for k, v in dataclasses.asdict(session.settings).items()),
            ("jobs", output.fmt_counts(counts)),
            ("live agents", _agents_text(agents)),
        ]
    )
    return ExitCode.OK


def _agents_text(agents: list[Any]) -> str:
    if not agents:
        return "none (start one with `clobi agent`)"
    names = ", ".join(f"{a.name} ({a.running} running)" for a in agents[:5])
    more = f" and {len(agents) - 5} more" if len(agents) > 5 else ""
    return f"{len(agents)}: {names}{more}"


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)
