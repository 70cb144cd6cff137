"""The Dramatiq broker and actors its workers import (`dramatiq bench.peers.dramatiq_app`)."""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from bench.peers import jobbody

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")

broker = RedisBroker(url=URL)
broker.add_middleware(Results(backend=RedisBackend(url=URL)))
dramatiq.set_broker(broker)


@dramatiq.actor(max_retries=0, queue_name="bench")
def drain_job(index: int) -> None:
    jobbody.run(index)


@dramatiq.actor(max_retries=0, queue_name="bench", store_results=True)
def latency_job(index: int) -> int:
    return jobbody.run(index)
