"""Clobi's embedded session under W1 (drain) and W2 (latency), as a user runs it: a session made
with `clobi session init` (durable settings as shipped), jobs queued with `clobi submit`, agents
started as `python -m clobi agent --session DIR --cpus C` and stopped with SIGTERM.
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench import procs
from bench.measure import DrainResult, LatencyResult, drain_from_watch, watch
from clobi import Client
from clobi.model.states import AttemptState, JobState

CLOBI = [sys.executable, "-m", "clobi"]
WARMUP_JOBS = 3
IDLE_GAP_S = 0.005  # between latency probes, as for the peers
POLL_S = 0.0005  # W2: the client polls the job's state this often


def init_session(path: Path) -> Path:
    subprocess.run([*CLOBI, "session", "init", str(path)], check=True, stdout=subprocess.DEVNULL)
    return path


def prequeue(session: Path, n: int) -> None:
    subprocess.run(
        [*CLOBI, "submit", "--session", str(session), "-n", str(n), "--", "/bin/true"],
        check=True,
        stdout=subprocess.DEVNULL,
    )


class Agents:
    """`count` agent processes with `cpus` each; optionally each under cProfile."""

    def __init__(self, session: Path, count: int, cpus: float, profile: Path | None = None):
        self.session, self.count, self.cpus, self.profile = session, count, cpus, profile
        self.procs: list[subprocess.Popen[bytes]] = []

    def argv(self, k: int) -> list[str]:
        agent = ["-m", "clobi", "agent", "--session", str(self.session), "--cpus", f"{self.cpus:g}"]
        if self.profile is None:
            return [sys.executable, *agent]
        return [sys.executable, "-m", "cProfile", "-o", f"{self.profile}-{k}.pstats", *agent]

    def env(self, k: int) -> dict[str, str] | None:
        """Agent `k`'s environment (None: this one's)."""
        return None

    def start(self) -> None:
        for k in range(self.count):
            with (self.session / f"agent-{k}.log").open("wb") as log:
                self.procs.append(
                    subprocess.Popen(
                        self.argv(k),
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=log,
                        env=self.env(k),
                        start_new_session=True,
                    )
                )

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            procs.stop(p, grace_s=30.0)
        self.procs = []


def wait_registered(client: Client, count: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(client.agents()) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(client.agents())} of {count} agents registered")
        time.sleep(0.01)


def terminal_count(client: Client) -> int:
    return sum(v for state, v in client.counts().items() if state.terminal)


def drain(
    workdir: Path, n: int, count: int, cpus: float, profile: Path | None = None
) -> DrainResult:
    """W1: `n` pre-queued `/bin/true` jobs, `count` agents with `cpus` each."""
    session = init_session(workdir / f"w1-{count}x{cpus:g}")
    prequeue(session, n)
    config = f"embedded, {count} agent{'s' * (count > 1)} × --cpus {cpus:g}"
    result = DrainResult("clobi", config, n, verified_by="store")
    agents = Agents(session, count, cpus, profile)
    with Client(session) as client:
        own0 = _own_cpu_s()
        started = time.monotonic()
        agents.start()
        try:
            seen = watch(
                lambda: terminal_count(client),
                n,
                started,
                cpu=lambda: procs.tree_cpu_s(agents.pids),
                alive=agents.alive,
            )
            rss = [procs.rss_mib(pid) for pid in agents.pids]
        finally:
            watching_ms = (_own_cpu_s() - own0) * 1000
            agents.stop()
        drain_from_watch(result, seen, 0.0)
        result.rss_mib = {
            "agent_rss": round(max(r[0] for r in rss), 1),
            "agent_peak": round(max(r[1] for r in rss), 1),
        }
        verify(client, n, result)
    result.note += f"watching the store cost {watching_ms:.0f} ms CPU (not counted)"
    return result


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def verify(client: Client, n: int, result: DrainResult | LatencyResult) -> None:
    """Every job succeeded with exactly one succeeded attempt; none missing."""
    jobs = client.list(limit=None)
    done = dup = failed = retried = 0
    for job in jobs:
        if job.state is not JobState.SUCCEEDED:
            failed += job.state.terminal
            continue
        wins = 1
        if job.attempts != 1:
            retried += 1
            wins = sum(a.state is AttemptState.SUCCEEDED for a in client.store.attempts(job.id))
        done += wins == 1
        dup += wins > 1
    if isinstance(result, DrainResult):
        result.done = done
    result.duplicated, result.failed = dup, failed
    result.lost = n - done - dup - failed
    if retried:
        result.note += f"{retried} jobs needed more than one attempt; "
    states = Counter(str(j.state) for j in jobs)
    if result.lost or failed or dup:
        result.note += f"states: {dict(states)}; "


def latency(workdir: Path, n: int, cores: int) -> LatencyResult:
    """W2: one `/bin/true` at a time into idle agents, submit → succeeded seen by the client."""
    session = init_session(workdir / "w2")
    result = LatencyResult("clobi", f"embedded, {cores} agents × --cpus 1")
    agents = Agents(session, cores, 1)
    with Client(session) as client:
        agents.start()
        try:
            wait_registered(client, cores)
            for i in range(WARMUP_JOBS + n):
                took = one_job(client)
                if i >= WARMUP_JOBS:
                    result.samples_s.append(took)
                time.sleep(IDLE_GAP_S)
        finally:
            agents.stop()
        verify(client, WARMUP_JOBS + n, result)
    return result


@dataclass(frozen=True)
class Probe:
    """One latency probe: the job, and when (wall clock) it was submitted and seen done."""

    job_id: int
    submitted: float
    seen: float
    seconds: float  # submit → seen done, on the monotonic clock


def probe(client: Client) -> Probe:
    """Submit one `/bin/true` and poll its state every `POLL_S` until it is finished."""
    submitted, started = time.time(), time.perf_counter()
    [job_id] = client.submit({"command": ["/bin/true"]})
    deadline = time.monotonic() + 60
    while not client.store.get_job(job_id).state.terminal:
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} did not finish in 60 s")
        time.sleep(POLL_S)
    return Probe(job_id, submitted, time.time(), time.perf_counter() - started)


def waited(client: Client) -> Probe:
    """Submit one `/bin/true` and wait for it with `Client.wait`, as `clobi wait` does: on an
    embedded session the store wakes the waiter when the agent's report commits."""
    submitted, started = time.time(), time.perf_counter()
    [job_id] = client.submit({"command": ["/bin/true"]})
    client.wait([job_id], timeout_s=60)
    return Probe(job_id, submitted, time.time(), time.perf_counter() - started)


def one_job(client: Client) -> float:
    return waited(client).seconds


def profile_summary(prefix: Path, top: int = 30) -> str:
    """The agents' cProfile files merged: the top functions by own time and by cumulative."""
    import io
    import pstats

    files = sorted(str(p) for p in prefix.parent.glob(prefix.name + "-*.pstats"))
    if not files:
        return "(no profile written)"
    out = io.StringIO()
    stats = pstats.Stats(*files, stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()
