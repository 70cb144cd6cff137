"""W6 (the dashboard's jobs page in a big session): 100,000 jobs in mixed states, tags, owners
and names, `clobi server` over them, and the listing requests a jobs page makes
(`GET /api/v1/jobs` with filters, sorts and pages), timed through HTTP with a token as a browser
would send them, on one kept-alive connection.

The session is built through the Store API (submits of arrays, then claims, reports and kills
in batches, interleaved, so every state, priority and owner is spread over the whole id range)
before the server starts; the requests are then timed in rounds, each round asking every
request once, so outside load hits them alike. Two rows: the embedded session (SQLite) served
by `clobi server --session DIR`, and a shared one (PostgreSQL).
"""

from __future__ import annotations

import random
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procs
from bench.clobi_runs import init_session
from bench.clobi_shared import serve, shared_session
from bench.measure import Unavailable
from clobi.auth import issue
from clobi.model.auth import Role
from clobi.model.records import AgentInfo, Capacity, Outcome, Submission
from clobi.model.spec import ArraySpec, JobSpec
from clobi.model.states import AttemptState
from clobi.session import load_session
from clobi.store.base import ClaimRequest, Store

OWNERS = tuple(f"user{k:02d}" for k in range(20))
TAGS = tuple(f"exp-{c}" for c in "abcdefghijkl")
WORDS = ("simulate", "render", "train", "reduce", "fetch", "convert", "align", "index")
PAGE = 50
SEED = 6


@dataclass
class Built:
    """What the session holds: jobs per state, for the row's notes and checks."""

    jobs: int
    seconds: float
    states: dict[str, int] = field(default_factory=dict)


def _specs(n: int, rng: random.Random) -> Iterator[tuple[str, JobSpec]]:
    """(owner, spec) of arrays of 1–200 jobs until `n` jobs, with mixed names, tags and
    priorities."""
    made = 0
    while made < n:
        size = min(n - made, rng.choice((1, 1, 5, 20, 50, 100, 200, 200)))
        word = rng.choice(WORDS)
        spec = JobSpec(
            command=("/bin/true",),
            name=f"{word}-{rng.randrange(10_000):04d}",
            tags=tuple(sorted(rng.sample(TAGS, rng.choice((0, 1, 1, 2))))),
            priority=rng.randrange(10),
            array=ArraySpec(count=size) if size > 1 else None,
        )
        made += size
        yield rng.choice(OWNERS), spec


def populate(store: Store, n: int, seed: int = SEED) -> Built:
    """Submit `n` jobs; after every ~2,000, claim most of the queue and finish most of what
    was claimed (succeeded, some failed), kill a few queued ones, leave the rest running."""
    rng = random.Random(seed)
    started = time.perf_counter()
    agent = store.register_agent(AgentInfo("bench-w6", "bench", 1e9, 1 << 60))
    request = ClaimRequest(agent, Capacity(1e9, 1 << 60), limit=500, lease_s=86_400.0)
    pending = 0
    for owner, spec in _specs(n, rng):
        ids = store.submit(Submission(spec=spec, owner=owner))
        pending += len(ids)
        if rng.random() < 0.02:
            store.kill(ids[: max(1, len(ids) // 4)])
        if pending >= 2_000:
            _work(store, agent, request, int(pending * 0.8), rng)
            pending = 0
    counts = {str(s): c for s, c in store.count_states().items()}
    return Built(sum(counts.values()), time.perf_counter() - started, counts)


def _work(store: Store, agent: int, request: ClaimRequest, count: int, rng: random.Random) -> None:
    claimed: list[int] = []
    while len(claimed) < count:
        got = store.claim(request)
        if not got:
            break
        claimed += [c.attempt_id for c in got]
    outcomes = []
    for attempt_id in claimed:
        roll = rng.random()
        if roll < 0.85:
            outcomes.append(Outcome(attempt_id, AttemptState.SUCCEEDED, exit_code=0))
        elif roll < 0.95:
            outcomes.append(
                Outcome(attempt_id, AttemptState.FAILED, exit_code=1, user_error=True)
            )  # else: left running
    for k in range(0, len(outcomes), 1_000):
        store.finish(agent, outcomes[k : k + 1_000])


# --- the requests of a jobs page --------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    name: str
    params: tuple[tuple[str, str], ...]
    pages: int = 1  # >1: walk to this page with the keyset cursor, timing only the last
    as_user: bool = False  # a user's token (own jobs only) instead of an admin's


def requests() -> list[Request]:
    """What a jobs page asks for, newest first, 50 at a time."""
    desc = (("desc", "true"), ("limit", str(PAGE)))
    page3 = ("offset", str(2 * PAGE))
    by_priority = (("sort", "priority"), *desc)
    return [
        Request("newest, no filter", desc),
        Request("state=running", (("state", "running"), *desc)),
        Request("state=failed", (("state", "failed"), *desc)),
        Request("tag=exp-c", (("tag", "exp-c"), *desc)),
        Request("owner=user07", (("owner", "user07"), *desc)),
        Request("text=render", (("text", "render"), *desc)),
        Request("by priority", by_priority),
        Request("succeeded, by update", (("state", "succeeded"), ("sort", "updated"), *desc)),
        Request("queued by priority, page 3 (offset)", (("state", "queued"), page3, *by_priority)),
        Request("queued by priority, page 3 (cursor)", (("state", "queued"), *by_priority), 3),
        Request(
            "own: succeeded, text=sim",
            (("state", "succeeded"), ("text", "sim"), *desc),
            as_user=True,
        ),
        Request("own: tag=exp-a, page 3 (offset)", (("tag", "exp-a"), page3, *desc), as_user=True),
    ]


def _cursor(params: tuple[tuple[str, str], ...], last: dict[str, Any]) -> list[tuple[str, str]]:
    sort = dict(params).get("sort", "id")
    extra = [("after_id", str(last["id"]))]
    if sort in ("priority", "state", "updated"):
        value = last["updated_at" if sort == "updated" else sort]
        extra.append(("after_value", repr(value) if isinstance(value, float) else str(value)))
    return [*params, *extra]


def time_request(http: Any, request: Request) -> tuple[float, int]:
    """Seconds the last page took (from sending to the parsed body) and its number of jobs."""
    params: list[tuple[str, str]] = list(request.params)
    for _ in range(request.pages - 1):
        page = http.get("/api/v1/jobs", params=params)
        page.raise_for_status()
        params = _cursor(request.params, page.json()[-1])
    started = time.perf_counter()
    answer = http.get("/api/v1/jobs", params=params)
    answer.raise_for_status()
    jobs = answer.json()
    return time.perf_counter() - started, len(jobs)


def measure(url: str, admin: str, user: str, rounds: int) -> list[dict[str, Any]]:
    """Every request once per round, `rounds` times (after one untimed round): p50/p95 in ms."""
    import httpx

    tokens = {False: admin, True: user}
    clients = {
        k: httpx.Client(base_url=url, headers={"Authorization": f"Bearer {t}"}, timeout=60)
        for k, t in tokens.items()
    }
    asked = requests()
    samples: dict[str, list[float]] = {r.name: [] for r in asked}
    sizes: dict[str, int] = {}
    try:
        for k in range(rounds + 1):
            for r in asked:
                seconds, size = time_request(clients[r.as_user], r)
                if k:
                    samples[r.name].append(seconds)
                sizes[r.name] = size
    finally:
        for client in clients.values():
            client.close()
    return [
        {
            "request": r.name,
            "query": "&".join(f"{k}={v}" for k, v in r.params),
            "as": "user" if r.as_user else "admin",
            "jobs": sizes[r.name],
            "p50_ms": statistics.median(samples[r.name]) * 1000,
            "p95_ms": _p95(samples[r.name]) * 1000,
            "max_ms": max(samples[r.name]) * 1000,
        }
        for r in asked
    ]


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


# --- the workload -----------------------------------------------------------------------------
USER = "user03"  # whose token asks for "own" jobs


def jobs_page(workdir: Path, n: int, rounds: int) -> list[dict[str, Any]]:
    """W6: a row for the embedded session (SQLite) and one for a shared one (PostgreSQL)."""
    return [
        _row(EMBEDDED, n, lambda: _embedded(workdir, n, rounds)),
        _row(SHARED, n, lambda: _shared(workdir, n, rounds)),
    ]


EMBEDDED = "embedded session (SQLite), clobi server --session DIR"
SHARED = "shared session (PostgreSQL), clobi server --db …"


def _row(config: str, n: int, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {"system": "clobi", "config": config, "jobs": n, "error": ""}
    try:
        row.update(run())
        row["lost"] = abs(n - sum(row["states"].values()))
    except Unavailable as exc:
        print(f"bench: W6 ({config}): {exc}", file=sys.stderr)
        row["error"] = str(exc)
    except Exception as exc:
        traceback.print_exc()
        row["error"] = f"{type(exc).__name__}: {exc}"
    return row


def _embedded(workdir: Path, n: int, rounds: int) -> dict[str, Any]:
    root = init_session(workdir / "w6-sqlite")
    store = load_session(root).open_store()
    try:
        built = populate(store, n)
        user = issue(store, Role.USER, USER)
    finally:
        store.close()
    with serve(root) as (url, admin, server):
        return _timed(built, server, url=url, admin=admin, user=user, rounds=rounds)


def _shared(workdir: Path, n: int, rounds: int) -> dict[str, Any]:
    with shared_session(workdir, "w6") as shared, shared.store_client() as client:
        built = populate(client.store, n)
        _analyze(shared.store_url)
        user = issue(client.store, Role.USER, USER)
        return _timed(
            built, shared.server, url=shared.url, admin=shared.admin, user=user, rounds=rounds
        )


def _analyze(url: str) -> None:
    """Fresh planner statistics, as autovacuum would soon have them: a run must not depend on
    whether it woke up during the build."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")


def _timed(
    built: Built, server: Any, *, url: str, admin: str, user: str, rounds: int
) -> dict[str, Any]:
    cpu0 = procs.tree_cpu_s([server.pid])
    found = measure(url, admin, user, rounds)
    asked = sum(r.pages for r in requests()) * (rounds + 1)
    cpu_ms = (procs.tree_cpu_s([server.pid]) - cpu0) * 1000 / asked
    p95s = [r["p95_ms"] for r in found]
    return {
        "build_s": built.seconds,
        "states": built.states,
        "requests": found,
        "worst_p95_ms": max(p95s),
        "median_p50_ms": statistics.median(r["p50_ms"] for r in found),
        "server_cpu_ms_per_request": cpu_ms,
        "short_pages": [r["request"] for r in found if r["jobs"] < PAGE],
    }
