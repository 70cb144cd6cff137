"""The server's sampler: the numbers behind the dashboard's charts, recorded every 10 s as time
series (`Store.record_samples`, read back through `GET /api/v1/series`).

Every replica runs this task, but only the holder of the store's `sampler` lock samples, so N
replicas record each sample once. Metrics:

- `jobs.<state>`: jobs in each state (all six, every time);
- `queued.p<priority>`: claimable queued jobs of each priority;
- `agents.live`: agents not gone;
- `instances.<pool>.<state>`: live instances of each pool in each state;
- `finished` (a count) and `throughput` (a rate, per second): jobs that reached a terminal
  state since the previous sample, from the events (on PostgreSQL an event committed late,
  behind a newer one already counted, is missed).

A priority, pool or state that has no jobs or instances any more is recorded as 0 once, so its
line on a chart drops to zero rather than stopping in mid-air, and is left out after that.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from fastapi.concurrency import run_in_threadpool

from clobi.errors import ClobiError
from clobi.model.instances import InstanceRecord, QueuedClass
from clobi.model.states import JobState
from clobi.store.base import SERIES_ARCHIVES, Store

log = logging.getLogger("clobi.api.sampler")

SAMPLE_INTERVAL_S = float(SERIES_ARCHIVES[0].step_s)
LOCK = "sampler"
# After a longer pause (this replica just took over, or was stalled), the jobs finished meanwhile
# are not piled into one bucket: throughput starts again at the next sample.
MAX_GAP_INTERVALS = 3
_FAMILIES = ("queued.", "instances.")  # metrics that come and go with priorities and pools


def levels(
    counts: Mapping[JobState, int],
    demand: Iterable[QueuedClass],
    agents_live: int,
    instances: Iterable[InstanceRecord],
) -> dict[str, float]:
    """The level metrics of one sample, from what the store says now."""
    values: dict[str, float] = {f"jobs.{s.value}": float(counts.get(s, 0)) for s in JobState}
    queued: Counter[str] = Counter()
    for c in demand:
        queued[f"queued.p{c.priority}"] += c.count
    values.update({k: float(n) for k, n in sorted(queued.items())})
    values["agents.live"] = float(agents_live)
    live = Counter(f"instances.{i.pool}.{i.state.value}" for i in instances)
    values.update({k: float(n) for k, n in sorted(live.items())})
    return values


class Sampler:
    """Samples the store every `interval_s` while it holds the `sampler` lock."""

    def __init__(
        self,
        store: Store,
        interval_s: float = SAMPLE_INTERVAL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.interval_s, self.clock = store, interval_s, clock
        self.owner = f"server:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._after_event: int | None = None  # the newest event seen by the last sample
        self._last_ts = 0.0
        self._shown: set[str] = set()  # family metrics the last sample recorded above zero

    async def run(self) -> None:
        """Sample until cancelled, once per interval, early in each bucket of the archive."""
        while True:
            await run_in_threadpool(self.sample_once)
            await asyncio.sleep(self.interval_s - self.clock() % self.interval_s + 0.5)

    def sample_once(self) -> bool:
        """One turn; True when this replica held the lock and recorded a sample."""
        try:
            if not self.store.try_lock(LOCK, self.owner, self.interval_s * 3):
                self._after_event = None  # another replica samples: start afresh on taking over
                return False
            now = self.clock()
            self.store.record_samples(now, self.gather(now))
        except ClobiError as exc:
            log.warning("sampling failed: %s", exc.message)
            return False
        return True

    def gather(self, now: float) -> dict[str, float]:
        """What to record at `now`: levels, then jobs finished since the previous sample."""
        store = self.store
        values = levels(
            store.count_states(),
            store.queued_demand(),
            len(store.list_agents()),
            store.list_instances(),
        )
        shown = {m for m in values if m.startswith(_FAMILIES)}
        values.update(dict.fromkeys(self._shown - shown, 0.0))
        self._shown = shown
        finished, newest = store.count_finished(self._after_event)
        elapsed_s = now - self._last_ts
        if self._after_event is not None and 0 < elapsed_s <= MAX_GAP_INTERVALS * self.interval_s:
            values["finished"] = float(finished)
            values["throughput"] = finished / elapsed_s
        self._after_event, self._last_ts = newest, now
        return values
