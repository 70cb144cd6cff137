"""`python -m bench [--quick] [--only W1,W2,…] [--json PATH]`: run the workloads, print the
tables, write the JSON. Exit 1 if any workload lost, duplicated or failed a job, 3 if a
workload could not run at all, 0 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import machine, peerenv, report
from bench.measure import DrainResult, LatencyResult, Unavailable, to_dict
from bench.peers import NEEDS_REDIS, NO_LATENCY, PEERS
from bench.services import Redis, redis

BENCH = Path(__file__).resolve().parent
WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6")


@dataclass(frozen=True)
class Plan:
    quick: bool
    drain_jobs: int
    latency_jobs: int
    submit_jobs: int
    store_sizes: tuple[int, int]
    claims: int  # W4: jobs per kind and round (3 rounds must fit in the smaller store)
    sandbox_jobs: int
    listing_jobs: int  # W6: the size the jobs page's target is about, in both modes
    listing_rounds: int

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(True, 3_000, 100, 100_000, (10_000, 200_000), 1_000, 10, 100_000, 15)
        return cls(False, 10_000, 200, 100_000, (10_000, 1_000_000), 1_500, 20, 100_000, 40)


class Run:
    """One benchmark run: its plan, scratch directory, services and collected results."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.plan = Plan.make(args.quick)
        self.only = args.only
        self.peers = args.peers
        self.profile = args.profile
        self.cores = machine.cores()
        self.work = BENCH / ".work" / f"run-{os.getpid()}"
        self.redis: Redis | None = None
        self._peer_python: Path | None = None
        self._peer_error = ""
        self.data: dict[str, Any] = {
            "mode": "quick" if args.quick else "full",
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "machine": {},
            "P": {"start": None, "end": None},
            "workloads": {},
            "runtimes_s": {},
            "others_cpu": {},  # share of all cores used by other processes during each step
            "problems": [],
        }

    # --- the run -------------------------------------------------------------------------
    def execute(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.data["machine"] = machine.info(self.work)
        with self._services():
            self.data["P"]["start"] = machine.measure_p(self.cores).as_dict()
            steps: dict[str, Callable[[], Any]] = {
                "W1": self.w1,
                "W2": self.w2,
                "W3": self.w3,
                "W4": self.w4,
                "W5": self.w5,
                "W6": self.w6,
            }
            for name in self.only:
                self._timed(name, steps[name])
            if self.profile:
                self._timed("profile", self.profile_agents)
            self.data["P"]["end"] = machine.measure_p(self.cores).as_dict()
        self.data["machine"]["busy_after"] = machine.background_busy()

    @contextlib.contextmanager
    def _services(self) -> Iterator[None]:
        """Redis for the peers that need it; without it those rows say why, the rest runs."""
        wants = {"W1", "W2"} & set(self.only) and NEEDS_REDIS & set(self.peers)
        with contextlib.ExitStack() as stack:
            if wants:
                try:
                    self.redis = stack.enter_context(redis())
                except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
                    self.data["problems"].append(f"Redis: {exc}")
            yield

    def _timed(self, name: str, step: Callable[[], Any]) -> None:
        print(f"bench: {name} …", file=sys.stderr, flush=True)
        started = time.monotonic()
        with machine.Others() as others:
            try:
                result = step()
                if result is not None:
                    self.data["workloads"][name] = result
            except Exception as exc:
                traceback.print_exc()
                self.data["problems"].append(f"{name}: {type(exc).__name__}: {exc}")
        self.data["runtimes_s"][name] = time.monotonic() - started
        self.data["others_cpu"][name] = others.share

    # --- workloads ----------------------------------------------------------------------
    def w1(self) -> list[dict[str, Any]]:
        from bench import clobi_runs, clobi_shared

        n, rows = self.plan.drain_jobs, []
        for count, cpus in ((self.cores, 1), (1, self.cores)):
            run = functools.partial(clobi_runs.drain, self.work, n, count, cpus)
            blank = DrainResult("clobi", f"embedded, {count} × --cpus {cpus}", n)
            rows.append(self._row(run, blank))
        shared = functools.partial(clobi_shared.drain, self.work, n, self.cores)
        rows.append(self._row(shared, DrainResult("clobi", clobi_shared.config(self.cores), n)))
        for peer in self.peers:
            rows.append(self._peer(peer, "drain", n))
        return rows

    def w2(self) -> list[dict[str, Any]]:
        from bench import clobi_runs, clobi_shared

        n = self.plan.latency_jobs
        rows = [
            to_dict(LatencyResult("floor", "posix_spawn + wait", machine.spawn_latency_s(n))),
            self._row(
                lambda: clobi_runs.latency(self.work, n, self.cores),
                LatencyResult("clobi", "embedded"),
            ),
            self._row(
                lambda: clobi_shared.latency(self.work, n, self.cores),
                LatencyResult("clobi", clobi_shared.config(self.cores)),
            ),
        ]
        rows += [self._peer(p, "latency", n) for p in self.peers if p not in NO_LATENCY]
        return rows

    def w3(self) -> dict[str, Any]:
        from bench import clobi_scale

        return clobi_scale.submission(self.work, self.plan.submit_jobs)

    def w4(self) -> list[dict[str, Any]]:
        from bench import clobi_scale

        return clobi_scale.scale(self.work, self.plan.store_sizes, self.plan.claims)

    def w5(self) -> dict[str, Any]:
        from bench import clobi_sandbox

        return clobi_sandbox.sandboxes(self.work, self.plan.sandbox_jobs, self.cores)

    def w6(self) -> list[dict[str, Any]]:
        from bench import clobi_listing

        plan = self.plan
        return clobi_listing.jobs_page(self.work, plan.listing_jobs, plan.listing_rounds)

    def profile_agents(self) -> None:
        from bench import clobi_runs

        prefix = self.work / "profile" / "agent"
        prefix.parent.mkdir()
        clobi_runs.drain(self.work / "profile", self.plan.drain_jobs, self.cores, 1, prefix)
        out = BENCH / "results" / "agent-profile.txt"
        out.parent.mkdir(exist_ok=True)
        out.write_text(clobi_runs.profile_summary(prefix))
        print(f"bench: agent profile written to {out}", file=sys.stderr)

    # --- helpers ------------------------------------------------------------------------
    def _row(self, run: Callable[[], Any], blank: DrainResult | LatencyResult) -> dict[str, Any]:
        try:
            result = run()
            return result if isinstance(result, dict) else to_dict(result)
        except Unavailable as exc:
            print(f"bench: {blank.system} ({blank.config}): {exc}", file=sys.stderr)
            blank.error = str(exc)
            return to_dict(blank)
        except Exception as exc:
            traceback.print_exc()
            blank.error = f"{type(exc).__name__}: {exc}"
            return to_dict(blank)

    def _peer(self, peer: str, workload: str, n: int) -> dict[str, Any]:
        blank: DrainResult | LatencyResult = (
            DrainResult(peer, "", n) if workload == "drain" else LatencyResult(peer, "")
        )
        return self._row(lambda: self._run_peer(peer, workload, n), blank)

    def _run_peer(self, peer: str, workload: str, n: int) -> dict[str, Any]:
        scratch = self.work / f"{peer}-{workload}"
        scratch.mkdir()
        request = {
            "peer": peer,
            "workload": workload,
            "n": n,
            "workers": self.cores,
            "workdir": str(scratch),
            "redis_url": self.redis.url if self.redis else "",
            "redis_pid": self.redis.pid() if self.redis and peer in NEEDS_REDIS else 0,
            "cores": self.cores,
        }
        if peer in NEEDS_REDIS and self.redis is None:
            raise RuntimeError("Redis is not available (see the problems below)")
        python = Path(sys.executable) if peer == "xargs" else self._peers_python()
        result = peerenv.run_peer(python, request, scratch / "runner.log")
        return result

    def _peers_python(self) -> Path:
        if self._peer_python is None and not self._peer_error:
            try:
                self._peer_python = peerenv.ensure()
            except Exception as exc:
                self._peer_error = f"peers venv: {exc}"
        if self._peer_python is None:
            raise RuntimeError(self._peer_error)
        return self._peer_python

    def exit_code(self) -> int:
        rows: list[dict[str, Any]] = []
        for value in self.data["workloads"].values():
            rows += value if isinstance(value, list) else [value]
        if any(r.get(k) for r in rows for k in ("lost", "duplicated", "failed")):
            return 1
        return 3 if self.data["problems"] or any(r.get("error") for r in rows) else 0


def _csv(valid: tuple[str, ...] | list[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in valid]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(valid)}")
        return items

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs (< 10 min, 2 cores)")
    parser.add_argument(
        "--only",
        type=_csv(WORKLOADS),
        default=list(WORKLOADS),
        metavar="W1,W2,…",
        help="run only these workloads",
    )
    parser.add_argument(
        "--peers",
        type=_csv(list(PEERS)),
        default=list(PEERS),
        metavar="P,…",
        help=f"peers to run (default: {','.join(PEERS)})",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=BENCH / "results" / "latest.json",
        metavar="PATH",
        help="where to write the results",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also run W1 once with the agents under cProfile (bench/results/agent-profile.txt)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch sessions")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="first wait up to S seconds for other processes to use < 10%% of the cores",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Installed packages have their bytecode compiled; every interpreter this run starts
    # (agents, the CLI, the peers' workers) should too, not recompile its modules each time.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    # SIGTERM unwinds like Ctrl-C, so that agents, servers and databases are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    run = Run(args)
    machine.wait_quiet(args.wait_quiet)
    try:
        run.execute()
    finally:
        if not args.keep:
            shutil.rmtree(run.work, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(run.data, indent=1, default=str) + "\n")
    report.show(run.data)
    print(f"\nresults: {args.json}", file=sys.stderr)
    return run.exit_code()


if __name__ == "__main__":
    sys.exit(main())
