"""What the peers with worker processes share: start and stop the workers, pre-queue, watch
the drain through the results file, send latency probes, check the results.

A peer module fills in four hooks: `worker_argv`, `enqueue`, `submit_one`, `wait_one`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import procs
from bench.measure import DrainResult, drain_from_watch, watch
from bench.peers import Counts, PeerContext, jobbody
from bench.services import Redis

REPO = Path(__file__).resolve().parents[2]
WARMUP_JOBS = 3  # latency probes not timed: the first one waits for the workers to come up
IDLE_GAP_S = 0.005  # between latency probes, so workers are idle again
RESULT_TIMEOUT_S = 60.0


def bin_path(name: str) -> str:
    """A console script of the peers' venv (the interpreter running us)."""
    return str(Path(sys.executable).parent / name)


class WorkerPeer:
    """A peer whose workers are separate processes fed through a queue."""

    name = ""
    stop_signal = signal.SIGTERM

    def __init__(self, ctx: PeerContext) -> None:
        self.ctx = ctx
        self.results = ctx.workdir / "results.bin"
        self.log = ctx.workdir / "workers.log"
        self.worker: subprocess.Popen[bytes] | None = None
        self.expected = 0
        self.config = self.describe(ctx.cores)

    # --- hooks --------------------------------------------------------------------------
    def describe(self, workers: int) -> str:
        raise NotImplementedError

    def worker_argv(self, workers: int) -> list[str]:
        raise NotImplementedError

    def enqueue(self, n: int) -> None:
        """Queue jobs 0..n-1 for the drain."""
        raise NotImplementedError

    def submit_one(self, index: int) -> Any:
        raise NotImplementedError

    def wait_one(self, handle: Any) -> int:
        """Block until the job is done; its exit code."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return {}

    # --- the interface ------------------------------------------------------------------
    def setup(self) -> None:
        if self.ctx.redis_pid:
            Redis().flush()
        self.results.unlink(missing_ok=True)

    def drain(self, n: int, workers: int) -> DrainResult:
        self.setup()
        self.expected = n
        self.enqueue(n)
        result = DrainResult(self.name, self.describe(workers), n, verified_by="results file")
        redis0 = procs.own_cpu_s(self.ctx.redis_pid) if self.ctx.redis_pid else 0.0
        started = time.monotonic()
        worker = self.start_workers(workers)

        def cpu() -> float:
            extra = procs.own_cpu_s(self.ctx.redis_pid) - redis0 if self.ctx.redis_pid else 0.0
            return procs.tree_cpu_s([worker.pid]) + extra

        seen = watch(
            lambda: jobbody.count(self.results),
            n,
            started,
            cpu=cpu,
            alive=lambda: worker.poll() is None,
        )
        result.rss_mib["workers"] = self._tree_rss_mib(worker.pid)
        self.stop_workers()
        return drain_from_watch(result, seen, 0.0)

    def latency(self, n: int) -> list[float]:
        self.setup()
        self.expected = n + WARMUP_JOBS
        self.start_workers(self.ctx.cores)
        samples = []
        for i in range(self.expected):
            t = time.perf_counter()
            code = self.wait_one(self.submit_one(i))
            if i >= WARMUP_JOBS:
                samples.append(time.perf_counter() - t)
            if code != 0:
                raise RuntimeError(f"latency job {i}: exit code {code}")
            time.sleep(IDLE_GAP_S)
        self.stop_workers()
        return samples

    def verify(self) -> Counts:
        return Counts(*jobbody.check(self.results, self.expected))

    def teardown(self) -> None:
        self.stop_workers()
        procs.kill_descendants(os.getpid())
        if self.ctx.redis_pid:
            Redis().flush()

    # --- workers ------------------------------------------------------------------------
    def start_workers(self, workers: int) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            jobbody.ENV_RESULTS: str(self.results),
            "BENCH_REDIS_URL": self.ctx.redis_url,
            **self.env(),
        }
        with self.log.open("ab") as sink:
            self.worker = subprocess.Popen(
                self.worker_argv(workers),
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self.worker

    def stop_workers(self) -> None:
        if self.worker is not None:
            procs.stop(self.worker, self.stop_signal)
            self.worker = None
        procs.reap_orphans()

    @staticmethod
    def _tree_rss_mib(root: int) -> float:
        pids = [root, *procs.descendants(root)]
        return round(sum(procs.rss_mib(p)[0] for p in pids), 1)
