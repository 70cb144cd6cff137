"""Dramatiq + Redis: one worker process with one thread per core (jobs are processes, so
threads suffice)."""

from __future__ import annotations

import sys
from typing import Any

from bench.peers.base import RESULT_TIMEOUT_S, WorkerPeer


class DramatiqPeer(WorkerPeer):
    name = "dramatiq"

    def describe(self, workers: int) -> str:
        return f"redis, --processes 1 --threads {workers}"

    def worker_argv(self, workers: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "dramatiq",
            "bench.peers.dramatiq_app",
            "--processes",
            "1",
            "--threads",
            str(workers),
        ]

    def enqueue(self, n: int) -> None:
        from bench.peers.dramatiq_app import drain_job

        for i in range(n):
            drain_job.send(i)

    def submit_one(self, index: int) -> Any:
        from bench.peers.dramatiq_app import latency_job

        return latency_job.send(index)

    def wait_one(self, handle: Any) -> int:
        return int(handle.get_result(block=True, timeout=int(RESULT_TIMEOUT_S * 1000)))
