"""The Huey instance its consumer imports; `BENCH_HUEY_ENGINE` picks Redis or SQLite."""

from __future__ import annotations

import os

from huey import RedisHuey, SqliteHuey

from bench.peers import jobbody

if os.environ.get("BENCH_HUEY_ENGINE", "redis") == "redis":
    huey = RedisHuey(
        "bench",
        url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7"),
        notify_result=True,
    )
else:
    huey = SqliteHuey("bench", filename=os.environ["BENCH_HUEY_DB"])


@huey.task()
def drain_job(index: int) -> None:
    jobbody.run(index)  # returns None: Huey stores no result


@huey.task()
def latency_job(index: int) -> int:
    return jobbody.run(index)
