"""`clobi agent` (run one here), `clobi agents` (list them) and `clobi events`."""

from __future__ import annotations

import argparse
import collections
import sys
from typing import TYPE_CHECKING, Any

from clobi.cli import output
from clobi.cli.exitcodes import ExitCode
from clobi.errors import UsageError

if TYPE_CHECKING:
    from clobi.client import Client
    from clobi.model.records import AgentRecord, Event


def register(subparsers: Any) -> None:
    agent = subparsers.add_parser(
        "agent",
        help="run an agent on this machine (in the foreground)",
        description="Run jobs of a session on this machine until stopped. SIGTERM or Ctrl-C "
        "drains: no new jobs are taken, running ones finish, then it exits.",
    )
    output.add_session(agent)
    agent.add_argument("--cpus", type=float, metavar="C", help="cpus to offer (default: all)")
    agent.add_argument("--memory", metavar="M", help="memory to offer, e.g. '8G' (default: all)")
    agent.add_argument("--gpus", type=int, default=0, metavar="G", help="gpus to offer")
    agent.add_argument(
        "--labels", default="", metavar="a,b", help="labels jobs can require (comma-separated)"
    )
    agent.add_argument("--name", help="the agent's name (default: host and pid)")
    agent.add_argument(
        "--pool", default="local", help="the pool it belongs to (embedded sessions; default local)"
    )
    agent.add_argument(
        "--instance", type=output.positive_int, metavar="ID", help=argparse.SUPPRESS
    )  # set by the resource manager's local providers
    agent.add_argument(
        "--join",
        metavar="URL",
        help="join the Clobi server at URL with a bootstrap token from $CLOBI_TOKEN or "
        "--token-file",
    )
    agent.add_argument("--token-file", metavar="FILE", help="read the bootstrap token from FILE")
    agent.add_argument(
        "--token",
        metavar="T",
        help="the bootstrap token (visible to other users: prefer $CLOBI_TOKEN or --token-file)",
    )
    agent.set_defaults(func=agent_cmd)

    agents = subparsers.add_parser("agents", help="list agents")
    output.add_session(agents)
    agents.add_argument("--all", action="store_true", help="include agents that are gone")
    output.add_json(agents)
    agents.set_defaults(func=agents_cmd)

    events = subparsers.add_parser("events", help="what happened, newest last")
    output.add_session(events)
    events.add_argument(
        "job", metavar="JOB", type=output.job_id, nargs="?", help="only this job's events"
    )
    events.add_argument(
        "--limit",
        type=output.positive_int,
        default=100,
        metavar="N",
        help="the last N events (default 100)",
    )
    output.add_json(events)
    events.set_defaults(func=events_cmd)


def agent_cmd(args: argparse.Namespace) -> int:
    from clobi.agent.loop import AgentOptions, run_agent
    from clobi.session import find_session

    options = AgentOptions(
        cpus=args.cpus,
        memory_bytes=_memory(args.memory),
        gpus=args.gpus,
        labels=frozenset(x.strip() for x in args.labels.split(",") if x.strip()),
        name=args.name,
        pool=args.pool,
        instance_id=args.instance,
    )
    if args.join or args.token or args.token_file:
        from clobi.session import load_session

        if not args.join:
            raise UsageError("agent: --token and --token-file go with --join URL")
        return run_agent(load_session(args.join, token=_bootstrap_token(args)), options)
    return run_agent(find_session(getattr(args, "session", None)), options)


def _bootstrap_token(args: argparse.Namespace) -> str | None:
    """From --token-file, --token (with a warning) or $CLOBI_TOKEN, which is then removed from
    this process's environment."""
    import os

    from_env = os.environ.pop("CLOBI_TOKEN", None)
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                return f.read().strip()
        except OSError as exc:
            raise UsageError(f"--token-file: {args.token_file}: {exc.strerror}") from None
    if args.token:
        print(
            "clobi: warning: a token on the command line is visible to other users of this "
            "machine; prefer CLOBI_TOKEN or --token-file",
            file=sys.stderr,
        )
        return str(args.token)
    return from_env


def _memory(text: str | None) -> int | None:
    if text is None:
        return None
    from clobi.model.units import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise UsageError(f"--memory: {text!r}: {exc}") from None


def agents_cmd(args: argparse.Namespace) -> int:
    with output.open_client(args) as client:
        agents = client.agents(include_gone=args.all)
    if args.json:
        output.print_json([output.plain(a) for a in agents])
    elif not agents:
        print("no agents (start one with `clobi agent`)", file=sys.stderr)
    else:
        output.print_table(
            (
                "id",
                "name",
                "host",
                "pool",
                "state",
                "cpus",
                "memory",
                "gpus",
                "running",
                "last seen",
            ),
            (_agent_row(a) for a in agents),
        )
    return ExitCode.OK


def _agent_row(a: AgentRecord) -> tuple[object, ...]:
    from clobi.model.units import format_bytes

    state = f"{a.state} (draining)" if a.drain and a.state != "gone" else a.state
    return (
        a.id,
        a.name,
        a.host,
        a.pool,
        state,
        f"{a.cpus:g}",
        format_bytes(a.memory_bytes),
        a.gpus,
        a.running,
        f"{output.fmt_age(a.last_seen)} ago",
    )


def events_cmd(args: argparse.Namespace) -> int:
    with output.open_client(args) as client:
        if args.job is not None:
            client.get(args.job)  # NotFound for unknown jobs
        events = _last_events(client, args.job, args.limit)
    if args.json:
        output.print_json([output.plain(e) for e in events])
    elif not events:
        print("no events", file=sys.stderr)
    else:
        output.print_table(
            ("id", "time", "job", "attempt", "agent", "event", "state", "detail"),
            (_event_row(e) for e in events),
        )
    return ExitCode.OK


def _last_events(client: Client, job_id: int | None, limit: int) -> list[Event]:
    # The store pages oldest first; keep the newest `limit` while reading forward.
    kept: collections.deque[Event] = collections.deque(maxlen=limit)
    after = 0
    while page := client.events(job_id, after_id=after):
        kept.extend(page)
        after = page[-1].id
    return list(kept)


def _event_row(e: Event) -> tuple[object, ...]:
    change = f"{e.from_state} -> {e.to_state}" if e.from_state or e.to_state else ""
    return (
        e.id,
        output.fmt_time(e.ts),
        e.job_id,
        e.attempt_id,
        e.agent_id,
        e.kind,
        change,
        e.detail,
    )
