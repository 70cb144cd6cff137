"""What every workload hands back, and the one way a drain is watched. Standard library only.

A drain's clock starts when its agents or workers are started on a pre-filled queue and stops
when the last job is seen done. `first_s` is when the first job was seen done: the `warm`
figures count only what happened after it, leaving out start-up (interpreter, imports,
connections), which weighs on short runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


class Unavailable(RuntimeError):
    """A workload cannot run on this machine (a service it needs is missing); its row says
    why, without a traceback."""


@dataclass
class DrainResult:
    """W1: `jobs` pre-queued no-op jobs run by `config`."""

    system: str
    config: str
    jobs: int
    done: int = 0  # jobs verified done exactly once
    lost: int = 0
    duplicated: int = 0
    failed: int = 0
    wall_s: float = 0.0
    first_s: float = 0.0
    warm_jobs: int = 0
    warm_s: float = 0.0
    cpu_s: float = 0.0  # CPU of every process involved, over wall_s
    warm_cpu_s: float = 0.0
    rss_mib: dict[str, float] = field(default_factory=dict)
    verified_by: str = ""
    note: str = ""
    error: str = ""

    @property
    def rate(self) -> float:
        return self.jobs / self.wall_s if self.wall_s > 0 and not self.error else 0.0

    @property
    def warm_rate(self) -> float:
        return self.warm_jobs / self.warm_s if self.warm_s > 0 and not self.error else self.rate

    @property
    def clean(self) -> bool:
        return not self.error and self.lost == 0 and self.duplicated == 0 and self.failed == 0


@dataclass
class LatencyResult:
    """W2: submit-to-done times of jobs sent one at a time into idle workers."""

    system: str
    config: str
    samples_s: list[float] = field(default_factory=list)
    lost: int = 0
    duplicated: int = 0
    failed: int = 0
    note: str = ""
    error: str = ""

    def pct_ms(self, q: float) -> float:
        return percentile(self.samples_s, q) * 1000 if self.samples_s else math.nan


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by the nearest-rank method."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Watch:
    """What `watch` saw: times relative to the start, CPU at the first and last sighting."""

    end_s: float
    first_s: float
    first_count: int
    first_cpu_s: float
    end_cpu_s: float
    final_count: int


def watch(
    count: Callable[[], int],
    n: int,
    started: float,
    *,
    cpu: Callable[[], float],
    stall_s: float = 60.0,
    alive: Callable[[], bool] = lambda: True,
) -> Watch:
    """Poll `count()` until it reaches `n`. Polls fast while nothing is done, then adaptively
    (a quarter of the predicted remaining time, 2-100 ms) so that watching costs little CPU.
    Raises TimeoutError when nothing progresses for `stall_s`, RuntimeError when `alive()`
    turns false first."""
    first: tuple[float, int, float] | None = None
    last_progress, last_count = time.monotonic(), -1
    while True:
        done = count()
        now = time.monotonic()
        if done >= n:
            end_cpu = cpu()
            if first is None:
                first = (now - started, done, end_cpu)
            return Watch(now - started, first[0], first[1], first[2], end_cpu, done)
        if done > 0 and first is None:
            first = (now - started, done, cpu())
        if done != last_count:
            last_progress, last_count = now, done
        elif now - last_progress > stall_s:
            raise TimeoutError(f"stalled at {done} of {n} jobs for {stall_s:g} s")
        if not alive():
            raise RuntimeError(f"workers exited with {done} of {n} jobs done")
        time.sleep(_next_poll_s(done, n, now - started, first))


def _next_poll_s(
    done: int, n: int, elapsed: float, first: tuple[float, int, float] | None
) -> float:
    if first is None or done <= first[1] or elapsed <= first[0]:
        return 0.002
    rate = (done - first[1]) / (elapsed - first[0])
    return min(0.1, max(0.002, (n - done) / rate / 4))


def drain_from_watch(result: DrainResult, w: Watch, cpu0: float) -> DrainResult:
    """Fill the timing fields of `result` from a watch whose CPU readings started at `cpu0`."""
    result.wall_s = w.end_s
    result.first_s = w.first_s
    result.cpu_s = w.end_cpu_s - cpu0
    result.warm_jobs = w.final_count - w.first_count
    result.warm_s = w.end_s - w.first_s
    result.warm_cpu_s = w.end_cpu_s - w.first_cpu_s
    return result


def to_dict(obj: Any) -> dict[str, Any]:
    """A result as JSON-ready data, derived figures included."""
    from dataclasses import asdict

    data = asdict(obj)
    if isinstance(obj, DrainResult):
        data.update(rate=obj.rate, warm_rate=obj.warm_rate)
    if isinstance(obj, LatencyResult):
        data.update({f"p{q}_ms": obj.pct_ms(q) for q in (50, 90, 99)})
        data["samples_s"] = [round(s, 6) for s in obj.samples_s]
    return data
