"""`clobi agent` (run one here), `clobi agents` (list them) and `clobi events`."""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from clobi.cli import output
from clobi.cli.exitcodes import ExitCode
from clobi.errors import UsageError

if TYPE_CHECKING:
    from clobi.client import Client
    from clobi.model.records import AgentRecord, Event

FOLLOW_POLL_S = 0.5
GAP_WAIT_S = 10.0  # how long a gap in event ids may be a transaction that has yet to commit
GAPS_KEPT_MAX = 10_000  # a wider gap (a big submit rolled back) is not waited for


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
    events.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="keep printing new events until Ctrl-C (with --json: one object per line)",
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
        if args.follow:
            return _follow(client, args, events)
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


def _follow(client: Client, args: argparse.Namespace, shown: list[Event]) -> int:
    """Print events as they commit, until Ctrl-C (which `main` turns into exit code 130)."""
    newest = _newest_id(client, args.job) if not shown else shown[-1].id
    # One job's events commit in id order (each change locks the job first): a plain cursor
    # misses none. Across jobs, a gap in the ids may be a transaction still committing.
    follower = EventFollower(lambda after: _events_after(client, args.job, after), newest)
    follower.watch_gaps = args.job is None
    _print_events(shown, args.json)
    while True:
        _print_events(follower.poll(), args.json)
        time.sleep(FOLLOW_POLL_S)


def _newest_id(client: Client, job_id: int | None) -> int:
    last = _last_events(client, job_id, 1)
    return last[-1].id if last else 0


def _events_after(client: Client, job_id: int | None, after: int) -> list[Event]:
    found: list[Event] = []
    while page := client.events(job_id, after_id=after):
        found += page
        after = page[-1].id
    return found


def _print_events(events: list[Event], as_json: bool) -> None:
    for e in events:
        if as_json:
            print(json.dumps(output.plain(e)))
        else:
            cells = [output.safe_text(c) for c in _event_row(e)]
            print(
                f"{cells[0]:>7}  {cells[1]}  {cells[2]:>6}  {cells[3]:>7}  {cells[4]:>5}  "
                f"{cells[5]:<14}  {cells[6]:<22}  {cells[7]}".rstrip()
            )
    sys.stdout.flush()


class EventFollower:
    """New events of the session, each once, however their transactions' commits interleave.

    Each poll reads past the newest id seen, and again from any gap below it that is younger
    than `GAP_WAIT_S`: an id that was handed out but not yet committed when its neighbours
    were read shows up there later. A gap that stays empty that long was rolled back.
    """

    def __init__(
        self,
        read: Callable[[int], list[Event]],
        after_id: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.read, self.top, self.clock = read, after_id, clock
        self.watch_gaps = True
        self.gaps: dict[int, float] = {}  # missing id -> when it was noticed

    def poll(self) -> list[Event]:
        now = self.clock()
        self.gaps = {i: t for i, t in self.gaps.items() if now - t < GAP_WAIT_S}
        start = min(min(self.gaps, default=self.top + 1) - 1, self.top)
        found = [e for e in self.read(start) if e.id > self.top or e.id in self.gaps]
        for e in found:
            self.gaps.pop(e.id, None)
        newer = sorted(e.id for e in found if e.id > self.top)
        if self.watch_gaps:
            expected = self.top + 1
            for i in newer:
                if i - expected <= GAPS_KEPT_MAX:
                    self.gaps.update(dict.fromkeys(range(expected, i), now))
                expected = i + 1
        self.top = max([self.top, *newer])
        return found


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
