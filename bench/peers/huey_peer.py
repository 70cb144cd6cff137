"""Huey with its process workers, on Redis or on SQLite.

The consumer polls an idle queue starting at 1 ms (its default is 100 ms, backing off to
10 s), which favours Huey's latency; with Redis it blocks on the list instead.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench.peers.base import RESULT_TIMEOUT_S, WorkerPeer

POLL_S = 0.0005  # the result poll for SQLite, as Clobi's client polls the store


class _Huey(WorkerPeer):
    engine = ""
    stop_signal = signal.SIGINT  # Huey's graceful shutdown; SIGTERM interrupts tasks

    def env(self) -> dict[str, str]:
        return {"BENCH_HUEY_ENGINE": self.engine, "BENCH_HUEY_DB": str(self._db)}

    @property
    def _db(self) -> Path:
        return self.ctx.workdir / "huey.db"

    def setup(self) -> None:
        super().setup()
        os.environ.update(self.env())  # the enqueuing side imports the same app
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self._db}{suffix}").unlink(missing_ok=True)

    def describe(self, workers: int) -> str:
        return f"{self.engine}, -w {workers} -k process"

    def worker_argv(self, workers: int) -> list[str]:
        consumer = str(Path(sys.executable).parent / "huey_consumer")
        return [
            sys.executable,
            consumer,
            "bench.peers.huey_app.huey",
            "-w",
            str(workers),
            "-k",
            "process",
            "-d",
            "0.001",
            "-m",
            "0.01",
            "-b",
            "1.1",
            "-n",
            "-q",
        ]

    def enqueue(self, n: int) -> None:
        from bench.peers.huey_app import drain_job

        for i in range(n):
            drain_job(i)

    def submit_one(self, index: int) -> Any:
        from bench.peers.huey_app import latency_job

        return latency_job(index)


class HueyRedis(_Huey):
    name = "huey-redis"
    engine = "redis"

    def wait_one(self, handle: Any) -> int:
        return int(handle.get(blocking=True, timeout=RESULT_TIMEOUT_S))


class HueySqlite(_Huey):
    name = "huey-sqlite"
    engine = "sqlite"

    def wait_one(self, handle: Any) -> int:
        deadline = time.monotonic() + RESULT_TIMEOUT_S
        while (value := handle.get()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError("huey: no result")
            time.sleep(POLL_S)
        return int(value)
