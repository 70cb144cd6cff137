"""Parsl bash apps, on the HighThroughputExecutor (local provider, one block) or on the
ThreadPoolExecutor (what a plain `parsl.load()` gives).

Parsl's queue lives inside the submitting process, so there is nothing to pre-fill: a drain
times submitting the apps too, after the executor has started and run one app per worker.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import as_completed
from typing import Any

import parsl
from parsl.app.app import bash_app
from parsl.config import Config
from parsl.executors import HighThroughputExecutor, ThreadPoolExecutor
from parsl.providers import LocalProvider

from bench import procs
from bench.measure import DrainResult
from bench.peers import Counts, PeerContext


@bash_app
def true_app() -> str:
    return "/bin/true"


class _Parsl:
    name = ""

    def __init__(self, ctx: PeerContext) -> None:
        self.ctx = ctx
        self.config = self.describe(ctx.cores)
        self.counts = Counts(0, 0, 0)
        self.loaded = False

    def describe(self, workers: int) -> str:
        raise NotImplementedError

    def executor(self, workers: int) -> Any:
        raise NotImplementedError

    def setup(self) -> None:
        pass  # the runner's PYTHONPATH lets HTEX workers import this module

    def _load(self, workers: int) -> None:
        config = Config(
            executors=[self.executor(workers)],
            run_dir=str(self.ctx.workdir / "runinfo"),
            strategy="none",
            initialize_logging=False,
        )
        parsl.load(config)
        self.loaded = True
        for fut in [true_app() for _ in range(workers)]:
            fut.result(timeout=120)

    def _unload(self) -> None:
        if self.loaded:
            parsl.dfk().cleanup()
            parsl.clear()
            self.loaded = False

    def drain(self, n: int, workers: int) -> DrainResult:
        self._load(workers)
        result = DrainResult(self.name, self.describe(workers), n, verified_by="futures")
        me = os.getpid()
        cpu0 = procs.tree_cpu_s([me])
        started = time.monotonic()
        futures = [true_app() for _ in range(n)]
        ok = failed = 0
        for fut in as_completed(futures):
            if fut.exception() is None and fut.result() == 0:
                ok += 1
            else:
                failed += 1
            if ok + failed == 1:
                result.first_s = time.monotonic() - started
                first_cpu = procs.tree_cpu_s([me])
        result.wall_s = time.monotonic() - started
        end_cpu = procs.tree_cpu_s([me])
        result.cpu_s = end_cpu - cpu0
        result.warm_jobs, result.warm_s = n - 1, result.wall_s - result.first_s
        result.warm_cpu_s = end_cpu - first_cpu
        self.counts = Counts(ok, n - ok, 0)
        self._unload()
        return result

    def latency(self, n: int) -> list[float]:
        self._load(self.ctx.cores)
        samples, ok = [], 0
        for _ in range(n):
            t = time.perf_counter()
            code = true_app().result(timeout=60)
            samples.append(time.perf_counter() - t)
            ok += code == 0
            time.sleep(0.005)
        self.counts = Counts(ok, n - ok, 0)
        self._unload()
        return samples

    def verify(self) -> Counts:
        return self.counts

    def teardown(self) -> None:
        self._unload()
        procs.kill_descendants(os.getpid())


class ParslHtex(_Parsl):
    name = "parsl-htex"

    def describe(self, workers: int) -> str:
        return f"bash_app, HighThroughputExecutor, {workers} workers"

    def executor(self, workers: int) -> Any:
        return HighThroughputExecutor(
            label="htex",
            max_workers_per_node=workers,
            address="127.0.0.1",
            provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
            worker_logdir_root=str(self.ctx.workdir),
        )


class ParslThreads(_Parsl):
    name = "parsl-threads"

    def describe(self, workers: int) -> str:
        return f"bash_app, ThreadPoolExecutor, {workers} threads"

    def executor(self, workers: int) -> Any:
        return ThreadPoolExecutor(label="threads", max_threads=workers)
