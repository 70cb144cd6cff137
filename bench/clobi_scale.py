"""W3 (submitting a big array) and W4 (claims and listings in a big store), Clobi only.

Each measurement runs in a fresh interpreter (`python -m bench.clobi_scale KIND SESSION ARG`)
so that its peak RSS is its own and no earlier workload's state helps or hurts it.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.clobi_runs import CLOBI, init_session

LS_RUNS = 7
LIST_RUNS = 25
CLAIM_ROUNDS = 3


def _measure(kind: str, session: Path, arg: float) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.clobi_scale", kind, str(session), str(arg)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    data: dict[str, Any] = json.loads(out.splitlines()[-1])
    return data


def submission(workdir: Path, n: int) -> dict[str, Any]:
    """W3: one array of `n` jobs through `Client.submit`; checks they are all queued."""
    return _submit_array(workdir / "w3", n)[0]


def _submit_array(session_dir: Path, n: int) -> tuple[dict[str, Any], Path]:
    session = init_session(session_dir)
    result = _measure("submit", session, n)
    from clobi import Client
    from clobi.model.states import JobState

    with Client(session) as client:
        counts = client.counts()
    queued = counts.get(JobState.QUEUED, 0)
    result.update(jobs=n, lost=n - queued, duplicated=max(0, sum(counts.values()) - n))
    return result, session


def scale(workdir: Path, sizes: Sequence[int], claims: int) -> list[dict[str, Any]]:
    """W4: build a store of each size with one array submit, then measure claims (rounds
    alternating between the stores, so outside load hits them alike; medians kept) and
    listings in each."""
    sessions, rows = [], []
    for size in sizes:
        built, session = _submit_array(workdir / f"w4-{size}", size)
        sessions.append(session)
        rows.append({"store_jobs": size, "build_s": built["seconds"]})
    rounds: list[list[dict[str, float]]] = [[] for _ in sizes]
    for _ in range(CLAIM_ROUNDS):
        for k, session in enumerate(sessions):
            rounds[k].append(_measure("claims", session, claims))
    for row, session, measured in zip(rows, sessions, rounds, strict=True):
        for key in ("claim_finish_rate", "finish_claim_rate"):
            row[key] = statistics.median(m[key] for m in measured)
        row["ls_cli_ms"] = _time_cli(
            [*CLOBI, "ls", "--session", str(session), "--state", "queued", "--limit", "50"]
        )
        row["python_start_ms"] = _time_cli([sys.executable, "-c", "pass"])
        row.update(_measure("list", session, LIST_RUNS))
        claimed = sum(int(m["claimed"]) for m in measured)
        row.update(_check_claims(session, row["store_jobs"], claimed))
    return rows


def _time_cli(argv: list[str]) -> float:
    """Median wall time of a command, in ms (one untimed run first, to warm the page cache)."""
    times = []
    for k in range(LS_RUNS + 1):
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if k:
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _check_claims(session: Path, size: int, claimed: int) -> dict[str, int]:
    from clobi import Client
    from clobi.model.states import JobState

    with Client(session) as client:
        counts = client.counts()
    succeeded = counts.get(JobState.SUCCEEDED, 0)
    missing = size - sum(counts.values())
    return {
        "lost": abs(claimed - succeeded) + missing + counts.get(JobState.RUNNING, 0),
        "duplicated": 0,
    }


# --- the measuring side (a fresh interpreter) ------------------------------------------------


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_submit(session: str, n: int) -> dict[str, Any]:
    from clobi import Client

    with Client(session) as client:
        before = _peak_rss_mib()
        started = time.perf_counter()
        ids = client.submit({"command": ["/bin/true"], "array": {"count": n}})
        seconds = time.perf_counter() - started
    assert len(ids) == n
    return {
        "seconds": seconds,
        "rate": n / seconds,
        "rss_before_mib": before,
        "peak_rss_mib": _peak_rss_mib(),
    }


def measure_claims(session: str, count: int) -> dict[str, Any]:
    """One round: claim + finish as two transactions, then finish-and-claim-next as one (what
    an agent does), `count` jobs each, straight on the Store API."""
    from clobi.model.records import AgentInfo, Capacity, Outcome
    from clobi.session import load_session
    from clobi.store.base import ClaimRequest

    store = load_session(Path(session)).open_store()
    agent = store.register_agent(AgentInfo("bench", "bench", 1.0, 1 << 40))
    req = ClaimRequest(agent, Capacity(1.0, 1 << 40), limit=1, lease_s=600.0)

    def outcome(attempt_id: int) -> Outcome:
        from clobi.model.states import AttemptState

        return Outcome(attempt_id, AttemptState.SUCCEEDED, exit_code=0)

    def two_tx() -> float:
        started = time.perf_counter()
        for _ in range(count):
            [claim] = store.claim(req)
            store.finish(agent, [outcome(claim.attempt_id)])
        return count / (time.perf_counter() - started)

    def one_tx() -> float:
        [claim] = store.claim(req)
        started = time.perf_counter()
        for _ in range(count):
            _, [claim] = store.finish(agent, [outcome(claim.attempt_id)], then=req)
        rate = count / (time.perf_counter() - started)
        store.finish(agent, [outcome(claim.attempt_id)])
        return rate

    rates = {"claim_finish_rate": two_tx(), "finish_claim_rate": one_tx()}
    store.close()
    return {**rates, "claimed": 2 * count + 1}


def measure_list(session: str, runs: int) -> dict[str, Any]:
    from clobi import Client

    with Client(session) as client:
        times = []
        for _ in range(int(runs)):
            started = time.perf_counter()
            jobs = client.list(states=["queued"], limit=50)
            times.append((time.perf_counter() - started) * 1000)
    assert len(jobs) == 50
    return {"list_ms": statistics.median(times), "list_max_ms": max(times)}


def main() -> int:
    kind, session, arg = sys.argv[1], sys.argv[2], float(sys.argv[3])
    run = {"submit": measure_submit, "claims": measure_claims, "list": measure_list}[kind]
    print(json.dumps(run(session, int(arg))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
