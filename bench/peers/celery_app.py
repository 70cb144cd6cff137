"""The Celery app its workers import (`celery -A bench.peers.celery_app worker`)."""

from __future__ import annotations

import os

from celery import Celery

from bench.peers import jobbody

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")

app = Celery("bench", broker=URL, backend=URL)
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    result_expires=600,
)


@app.task(ignore_result=True)
def drain_job(index: int) -> int:
    return jobbody.run(index)


@app.task
def latency_job(index: int) -> int:
    return jobbody.run(index)
