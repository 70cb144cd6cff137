"""The project's speed and memory targets (issues 5 and 6), checked against one run's results.

Clobi's rows are embedded (`config` "embedded, …") or shared (`config` "shared, …": server,
PostgreSQL and agents over HTTP); each has its own drain target, and "the best peer" and the
latency targets are about the embedded rows.

Peers for "≥ 1.5× the best peer" are the job systems (Celery, Huey, Dramatiq, Parsl) at their
warm rate, start-up left out, while Clobi's rate includes its start-up: the strict reading.
`xargs` is a baseline without a queue, shown for scale but not a peer here.

`factor` says by how much a target is met (≥ 1) or missed (< 1): measured/goal for "at
least" goals, goal/measured for "at most" goals. 0.5 means "half way there".
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

NOT_PEERS = frozenset({"clobi", "xargs"})
SHARED_DRAIN_P = 0.6
LISTING_MS = 300.0  # W6: a filtered page of the jobs page, through the server


@dataclass(frozen=True)
class Target:
    name: str
    goal: str
    value: str
    factor: float | None  # None: not measured in this run

    @property
    def met(self) -> bool | None:
        return None if self.factor is None else self.factor >= 1


def at_least(name: str, goal_text: str, value_text: str, value: float, goal: float) -> Target:
    return Target(name, goal_text, value_text, value / goal)


def at_most(name: str, goal_text: str, value_text: str, value: float, goal: float) -> Target:
    return Target(name, goal_text, value_text, goal / value if value > 0 else math.inf)


def evaluate(report: dict[str, Any]) -> list[Target]:
    return list(_all(report))


def _all(report: dict[str, Any]) -> Iterator[Target]:
    w = report["workloads"]
    yield from _drain(report, w.get("W1") or [])
    yield from _shared_drain(report, w.get("W1") or [])
    yield from _latency(w.get("W2") or [])
    yield from _submit(w.get("W3"))
    yield from _scale(w.get("W4") or [])
    yield from _listing(w.get("W6") or [])


def clobi_rows(rows: list[dict[str, Any]], *, shared: bool) -> list[dict[str, Any]]:
    """Clobi's rows of one workload that ran, embedded or shared."""
    return [
        r
        for r in rows
        if r["system"] == "clobi"
        and not r.get("error")
        and r["config"].startswith("shared") == shared
    ]


def p_rate(report: dict[str, Any]) -> float:
    """P for ratios: the higher of the start and end measurements."""
    rates = [p["rate"] for p in report["P"].values() if p]
    return max(rates) if rates else math.nan


def _drain(report: dict[str, Any], rows: list[dict[str, Any]]) -> Iterator[Target]:
    clobi = clobi_rows(rows, shared=False)
    if not clobi:
        return
    best = max(clobi, key=lambda r: r["rate"])
    share = best["rate"] / p_rate(report)
    yield at_least("W1 Clobi embedded drain", "≥ 0.85 P", f"{share:.2f} P", share, 0.85)
    peers = [r for r in rows if r["system"] not in NOT_PEERS and not r.get("error")]
    if peers:
        top = max(peers, key=lambda r: r["warm_rate"])
        ratio = best["rate"] / top["warm_rate"]
        text = f"{ratio:.2f}× {top['system']} (warm)"
        yield at_least("W1 Clobi vs best peer", "≥ 1.5×", text, ratio, 1.5)
    agents = clobi + clobi_rows(rows, shared=True)
    biggest = max(agents, key=lambda r: r["rss_mib"].get("agent_peak", 0.0))
    rss, kind = biggest["rss_mib"].get("agent_peak", 0.0), biggest["config"].split(",")[0]
    text = f"{rss:.1f} MiB peak RSS ({kind})"
    yield at_most("agent memory during W1", "≤ 60 MiB", text, rss, 60)


def _shared_drain(report: dict[str, Any], rows: list[dict[str, Any]]) -> Iterator[Target]:
    name, goal = "W1 Clobi shared drain", f"≥ {SHARED_DRAIN_P} P"
    shared = clobi_rows(rows, shared=True)
    if shared:
        share = shared[0]["rate"] / p_rate(report)
        yield at_least(name, goal, f"{share:.2f} P", share, SHARED_DRAIN_P)
    elif any(r["system"] == "clobi" and r["config"].startswith("shared") for r in rows):
        yield Target(name, goal, "could not run (see the W1 notes)", None)


def _latency(rows: list[dict[str, Any]]) -> Iterator[Target]:
    clobi = clobi_rows(rows, shared=False)
    if clobi:
        p50, p99 = clobi[0]["p50_ms"], clobi[0]["p99_ms"]
        yield at_most("W2 latency p50", "≤ 2.5 ms", f"{p50:.2f} ms", p50, 2.5)
        yield at_most("W2 latency p99", "≤ 10 ms", f"{p99:.2f} ms", p99, 10)


def _submit(r: dict[str, Any] | None) -> Iterator[Target]:
    if r:
        rate = r["rate"]
        yield at_least("W3 array submission", "≥ 50,000 jobs/s", f"{rate:,.0f} jobs/s", rate, 5e4)


def _scale(rows: list[dict[str, Any]]) -> Iterator[Target]:
    if len(rows) < 2:
        return
    small, big = rows[0], rows[-1]
    ratio = big["claim_finish_rate"] / small["claim_finish_rate"]
    name = f"W4 claim rate at {big['store_jobs']:,} vs {small['store_jobs']:,}"
    text = f"{ratio:.2f}× ({big['claim_finish_rate']:,.0f} vs {small['claim_finish_rate']:,.0f}/s)"
    yield at_least(name, "≥ 0.8× (within 20 %)", text, ratio, 0.8)
    for key, what in (("list_ms", "Client.list"), ("ls_cli_ms", "clobi ls (CLI)")):
        worst = max(r[key] for r in rows)
        yield at_most(f"W4 listing, {what}", "< 100 ms", f"{worst:.1f} ms (worst size)", worst, 100)


def _listing(rows: list[dict[str, Any]]) -> Iterator[Target]:
    goal = f"p95 < {LISTING_MS:.0f} ms"
    for r in rows:
        name = f"W6 jobs page, {r['jobs']:,} jobs, {r['config'].split(',')[0]}"
        if r.get("error"):
            yield Target(name, goal, "could not run (see the W6 notes)", None)
            continue
        worst = max(r["requests"], key=lambda q: q["p95_ms"])
        text = f"{worst['p95_ms']:.1f} ms (worst request: {worst['request']})"
        yield at_most(name, goal, text, worst["p95_ms"], LISTING_MS)
