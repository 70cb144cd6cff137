"""`clobi pool ls|show|scale|drain|kill`, `clobi instances` and `clobi manager`.

Pools are declared in the session's clobi.toml; `scale`, and `drain`/`kill` of a whole pool,
write it back (the old file kept as clobi.toml.bak) and the manager follows at its next tick.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from clobi.cli import output
from clobi.cli.exitcodes import ExitCode
from clobi.errors import UsageError

if TYPE_CHECKING:
    from clobi.manager.control import PoolStatus
    from clobi.model.instances import InstanceRecord
    from clobi.session import Session


def register(subparsers: Any) -> None:
    pool = subparsers.add_parser(
        "pool",
        help="see and change the session's pools",
        description="Pools are declared in clobi.toml ([pools.NAME]); the manager grows and "
        "shrinks them. Changes made here are written back to clobi.toml.",
    )
    sub = pool.add_subparsers(dest="pool_command", metavar="ACTION", required=True)
    ls = sub.add_parser("ls", help="every pool: bounds, instances, agents, cost")
    output.add_session(ls)
    output.add_json(ls)
    ls.set_defaults(func=pool_ls)
    show = sub.add_parser("show", help="one pool: its declaration, instances and decisions")
    _pool_arg(show)
    output.add_json(show)
    show.set_defaults(func=pool_show)
    scale = sub.add_parser("scale", help="change a pool's min and max (written to clobi.toml)")
    _pool_arg(scale)
    scale.add_argument("--min", type=_count, metavar="N", help="keep at least N instances")
    scale.add_argument("--max", type=_count, metavar="N", help="run at most N instances")
    scale.set_defaults(func=pool_scale)
    kinds = (
        ("drain", "soft kill: finish running jobs, then stop"),
        ("kill", "hard kill: stop now, requeue their jobs"),
    )
    for name, what in kinds:
        action = sub.add_parser(name, help=f"{what} (a whole pool is also scaled to 0)")
        _pool_arg(action)
        action.add_argument(
            "--instance", type=output.positive_int, action="append", default=[], metavar="ID",
            help="only this instance (repeatable); the pool's bounds stay",
        )  # fmt: skip
        action.set_defaults(func=pool_drain if name == "drain" else pool_kill)

    instances = subparsers.add_parser("instances", help="the machines the manager started")
    output.add_session(instances)
    instances.add_argument("--pool", help="only this pool's")
    instances.add_argument("--all", action="store_true", help="include ended instances")
    output.add_json(instances)
    instances.set_defaults(func=instances_cmd)

    manager = subparsers.add_parser(
        "manager",
        help="run the resource manager in the foreground",
        description="Grow and shrink the session's pools from the queue, until stopped. One "
        "manager is active per session (`clobi server` runs one too); others wait.",
    )
    output.add_session(manager)
    manager.add_argument(
        "--join-url", metavar="URL", help="the server new machines' agents join (default: none: "
        "agents of local pools use the session directory)",
    )  # fmt: skip
    manager.add_argument("--once", action="store_true", help="one tick, then exit")
    manager.set_defaults(func=manager_cmd)


def _pool_arg(parser: argparse.ArgumentParser) -> None:
    output.add_session(parser)
    parser.add_argument("pool", metavar="POOL")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a whole number, 0 or more")
    return value


def _local_session(args: argparse.Namespace) -> Session:
    from clobi.session import find_session

    session = find_session(getattr(args, "session", None))
    if session.credentials is not None:
        raise UsageError(
            "pools are managed where the session's clobi.toml is: run this on the server's "
            "machine with --session DIR"
        )
    return session


def _config_path(session: Session) -> Any:
    from clobi.session import CONFIG_NAME

    return session.root / CONFIG_NAME


def _statuses(session: Session, only: str | None = None) -> list[PoolStatus]:
    from clobi.manager.config import read_pools
    from clobi.manager.control import pool_statuses

    config = read_pools(_config_path(session))
    pools = [config.pool(only)] if only else list(config.pools)
    store = session.open_store()
    try:
        return pool_statuses(store, pools, time.time())
    finally:
        store.close()


def pool_ls(args: argparse.Namespace) -> int:
    statuses = _statuses(_local_session(args))
    if args.json:
        output.print_json([_status_dict(s) for s in statuses])
    elif not statuses:
        print("no pools (declare them in clobi.toml as [pools.NAME])", file=sys.stderr)
    else:
        output.print_table(
            (
                "pool",
                "provider",
                "slots",
                "cost/h",
                "min",
                "max",
                "instances",
                "agents",
                "busy",
                "cost",
            ),
            (_status_row(s) for s in statuses),
        )
    return ExitCode.OK


def _status_row(s: PoolStatus) -> tuple[object, ...]:
    from clobi.model.pools import describe_slots

    p = s.pool
    return (
        p.name, p.provider, describe_slots(p), f"{p.cost_per_hour:.2f}", p.min, p.max,
        _instance_counts(s.instances), len(s.agents), s.busy_agents, f"{s.cost:.4f}",
    )  # fmt: skip


def _instance_counts(instances: tuple[InstanceRecord, ...]) -> str:
    counts: dict[str, int] = {}
    for i in instances:
        counts[i.state.value] = counts.get(i.state.value, 0) + 1
    return ", ".join(f"{n} {state}" for state, n in counts.items()) or "0"


def _status_dict(s: PoolStatus) -> dict[str, Any]:
    from clobi.model.pools import pool_to_table

    return {
        "name": s.pool.name,
        **pool_to_table(s.pool),
        "instances": [output.plain(i) for i in s.instances],
        "agents": [a.id for a in s.agents],
        "busy_agents": s.busy_agents,
        "cost": round(s.cost, 6),
    }


def pool_show(args: argparse.Namespace) -> int:
    session = _local_session(args)
    (status,) = _statuses(session, args.pool)
    decisions = _decisions(session, args.pool)
    if args.json:
        output.print_json({**_status_dict(status), "decisions": decisions})
        return ExitCode.OK
    from clobi.model.pools import describe_slots

    p = status.pool
    output.print_fields(
        [
            ("pool", p.name),
            ("provider", p.provider),
            ("slots", describe_slots(p)),
            ("bounds", f"min {p.min}, max {p.max}"),
            ("cost", f"{p.cost_per_hour:.2f}/h; {status.cost:.4f} so far"),
            ("timeouts", f"idle {p.idle_timeout_s:g}s, boot {p.boot_timeout_s:g}s"),
            ("settings", ", ".join(f"{k}={v}" for k, v in p.settings.items()) or "-"),
        ]
    )
    if status.instances:
        print()
        _print_instances(list(status.instances))
    if decisions:
        print("\nrecent decisions:")
        for d in decisions[-10:]:
            print(f"  {output.fmt_time(d['ts'])}  {output.safe_text(d['detail'])}")
    return ExitCode.OK


def _decisions(session: Session, pool: str) -> list[dict[str, Any]]:
    store = session.open_store()
    try:
        events = store.events(limit=100_000)
    finally:
        store.close()
    mark = f"pool {pool}:"
    return [
        {"ts": e.ts, "kind": e.kind, "detail": e.detail}
        for e in events
        if e.kind.startswith("manager_") and e.detail.startswith(mark)
    ]


def pool_scale(args: argparse.Namespace) -> int:
    from clobi.manager.config import change_pool, scale

    if args.min is None and args.max is None:
        raise UsageError("pool scale: give --min N, --max N or both")
    session = _local_session(args)
    new = change_pool(_config_path(session), args.pool, lambda p: scale(p, args.min, args.max))
    print(f"pool {new.name}: min {new.min}, max {new.max} (clobi.toml updated; the old one is "
          "clobi.toml.bak)")  # fmt: skip
    return ExitCode.OK


def pool_drain(args: argparse.Namespace) -> int:
    from clobi.manager import control

    session, chosen = _chosen(args)
    store = session.open_store()
    try:
        done = control.drain(store, chosen, "drained by user")
    finally:
        store.close()
    print(f"pool {args.pool}: draining {len(done)} instance{'s' * (len(done) != 1)}"
          + (f" ({output.id_ranges(done)})" if done else ""))  # fmt: skip
    return ExitCode.OK


def pool_kill(args: argparse.Namespace) -> int:
    from clobi.manager import control

    session, chosen = _chosen(args)
    store = session.open_store()
    try:
        lost_cap = session.settings.lost_cap
        requeued = control.hard_kill(store, chosen, "killed by user", lost_cap)
    finally:
        store.close()
    print(f"pool {args.pool}: killing {len(chosen)} instance{'s' * (len(chosen) != 1)}; "
          f"{len(requeued)} job{'s' * (len(requeued) != 1)} requeued")  # fmt: skip
    return ExitCode.OK


def _chosen(args: argparse.Namespace) -> tuple[Session, list[InstanceRecord]]:
    """The session and the instances to act on; a whole pool is first scaled to 0 so that
    the manager does not start new ones."""
    from clobi.manager import control
    from clobi.manager.config import change_pool, read_pools, scale

    session = _local_session(args)
    read_pools(_config_path(session)).pool(args.pool)  # the pool must be declared
    if not args.instance:
        change_pool(_config_path(session), args.pool, lambda p: scale(p, 0, 0))
    store = session.open_store()
    try:
        return session, control.pick_instances(store, args.pool, args.instance)
    finally:
        store.close()


def instances_cmd(args: argparse.Namespace) -> int:
    with output.open_client(args) as client:
        found = client.store.list_instances(args.pool, include_ended=args.all)
    if args.json:
        output.print_json([output.plain(i) for i in found])
    elif not found:
        print("no instances" + (" (--all shows ended ones)" if not args.all else ""),
              file=sys.stderr)  # fmt: skip
    else:
        _print_instances(found)
    return ExitCode.OK


def _print_instances(found: list[InstanceRecord]) -> None:
    now = time.time()
    output.print_table(
        ("id", "pool", "state", "provider id", "agent", "up since", "cost", "why"),
        (
            (
                i.id,
                i.pool,
                i.state.value,
                i.provider_id or "-",
                i.agent_id if i.agent_id is not None else "-",
                output.fmt_time(i.launched_at),
                f"{i.cost(now):.4f}",
                output.safe_text(i.reason),
            )
            for i in found
        ),
    )


def manager_cmd(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from clobi.manager.loop import Manager, join_info

    session = _local_session(args)
    logging.basicConfig(level=logging.INFO, format="clobi manager: %(message)s")
    store = session.open_store()
    manager = Manager(session, store, join_info(session, store, args.join_url))
    try:
        if args.once:
            manager.tick()
            return ExitCode.OK
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        manager.run(stop)
    finally:
        manager.close()
        store.close()
    return ExitCode.OK
