"""Celery + Redis: a prefork worker with one child per core."""

from __future__ import annotations

import sys
from typing import Any

from bench.peers.base import RESULT_TIMEOUT_S, WorkerPeer


class CeleryPeer(WorkerPeer):
    name = "celery"

    def describe(self, workers: int) -> str:
        return f"redis, prefork --concurrency={workers}"

    def worker_argv(self, workers: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.peers.celery_app",
            "worker",
            f"--concurrency={workers}",
            "--pool=prefork",
            "--loglevel=WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]

    def enqueue(self, n: int) -> None:
        from bench.peers.celery_app import app, drain_job

        with app.producer_or_acquire() as producer:
            for i in range(n):
                drain_job.apply_async((i,), producer=producer)

    def submit_one(self, index: int) -> Any:
        from bench.peers.celery_app import latency_job

        return latency_job.delay(index)

    def wait_one(self, handle: Any) -> int:
        return int(handle.get(timeout=RESULT_TIMEOUT_S))
