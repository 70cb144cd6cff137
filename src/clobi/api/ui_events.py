"""Live updates for the dashboard: one task per server process tails the store's events and
fans them out to every connected browser over Server-Sent Events.

The tail asks the store every `poll_s` for events past the newest it has seen, re-reading a
window of the last `window_ids` ids: on PostgreSQL an event can commit after one with a higher
id, and re-reading the window (deduplicated by id) still finds it. An event that commits more
than `window_ids` ids late is missed by live pages (they show it at their next load).

Each browser has a bounded queue; one that falls `queue_max` events behind is dropped and
reconnects (EventSource does so by itself) with `Last-Event-ID`, from which the hub replays
what it still keeps, or tells the page to load afresh (`reset`). Stream ids are the hub's own
delivery sequence (`<epoch>-<n>`), so a late event never goes "back in time" for a client.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Protocol

from fastapi.concurrency import run_in_threadpool

from clobi.model.auth import Principal
from clobi.model.records import Event, JobFilter, JobRecord

log = logging.getLogger("clobi.api.ui")

POLL_S = 0.25
RETRY_PRIME_S = 1.0
WINDOW_IDS = 256
RECENT_MAX = 2000
DECISIONS_MAX = 200
QUEUE_MAX = 1000
PAGE = 1000
KEEPALIVE_S = 15.0
SLICE_S = 1.0  # how often a stream checks whether the server is stopping
RETRY_MS = 1000
_PAGES_PER_POLL = 20
# Events users see besides their own jobs': what GET /agents and /instances show them anyway.
_PUBLIC_KINDS = ("agent_", "instance_")


class EventSource(Protocol):
    """What the hub reads from the store."""

    def events(
        self, job_id: int | None = None, after_id: int = 0, limit: int = 1000
    ) -> list[Event]: ...

    def list_jobs(self, flt: JobFilter) -> list[JobRecord]: ...


@dataclass(frozen=True)
class LiveEvent:
    """A store event with its place in this hub's stream and its job's owner (None when the
    event is about no job, or about one that is gone)."""

    seq: int
    event: Event
    owner: str | None

    def visible_to(self, principal: Principal) -> bool:
        """Admins see everything; users their own jobs' events and agents' and instances'."""
        if principal.is_admin:
            return True
        if self.event.job_id is not None:
            return self.owner == principal.name
        return self.event.kind.startswith(_PUBLIC_KINDS)

    def as_json(self) -> dict[str, object]:
        e = self.event
        return {
            "id": e.id,
            "ts": e.ts,
            "job_id": e.job_id,
            "attempt_id": e.attempt_id,
            "agent_id": e.agent_id,
            "kind": e.kind,
            "from_state": e.from_state,
            "to_state": e.to_state,
            "detail": e.detail,
        }


class Subscriber:
    """One connected browser: its principal and the events waiting to be sent to it. The
    queue holds at most `queue_max` events, then None: the follower is dropped."""

    def __init__(self, principal: Principal, queue_max: int) -> None:
        self.principal = principal
        self.queue_max = queue_max
        self.queue: asyncio.Queue[LiveEvent | None] = asyncio.Queue()
        self.dropped = False

    def offer(self, live: LiveEvent) -> None:
        if self.dropped or not live.visible_to(self.principal):
            return
        if self.queue.qsize() >= self.queue_max:
            self.drop()  # too slow: it reconnects and catches up from the replay
        else:
            self.queue.put_nowait(live)

    def drop(self) -> None:
        if not self.dropped:
            self.dropped = True
            self.queue.put_nowait(None)


class EventHub:
    """The tail of the store's events and the browsers following it."""

    def __init__(
        self,
        store: EventSource,
        *,
        poll_s: float = POLL_S,
        window_ids: int = WINDOW_IDS,
        recent_max: int = RECENT_MAX,
        queue_max: int = QUEUE_MAX,
    ) -> None:
        self._store = store
        self.poll_s, self.window_ids, self.queue_max = poll_s, window_ids, queue_max
        self.epoch = secrets.token_hex(4)
        self.stopping = False
        self._seq = 0
        self._high = 0  # the highest event id seen
        self._seen: set[int] = set()  # ids seen within the window below `_high`
        self._recent: collections.deque[LiveEvent] = collections.deque(maxlen=recent_max)
        self._decisions: collections.deque[Event] = collections.deque(maxlen=DECISIONS_MAX)
        self._subscribers: set[Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self._primed: asyncio.Event | None = None

    # --- lifecycle --------------------------------------------------------------------------
    async def started(self) -> None:
        """Start the tail on the running loop (once) and wait until it has read the recent
        history."""
        if self._primed is None:
            self._primed = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(self._primed))
        await self._primed.wait()

    def stop(self) -> None:
        """End the tail and, within `SLICE_S`, every stream (safe to call from a signal
        handler: sets a flag)."""
        self.stopping = True

    async def close(self) -> None:
        """Stop and wait for the tail to end (at the app's shutdown)."""
        self.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, primed: asyncio.Event) -> None:
        ready = False  # the newest event is known: only then is anything published
        while not self.stopping:
            try:
                if ready:
                    for event, owner in await run_in_threadpool(self._poll):
                        self._publish(event, owner)
                else:
                    await run_in_threadpool(self._prime)
                    ready = True
            except Exception:  # the store is away for a moment: the tail goes on
                log.warning("dashboard events: reading the store failed", exc_info=True)
            primed.set()  # pages wait for the first try only, whatever it gave
            await asyncio.sleep(self.poll_s if ready else RETRY_PRIME_S)
        for sub in list(self._subscribers):
            sub.drop()

    # --- reading the store (in a worker thread) ---------------------------------------------
    def _prime(self) -> None:
        """Find the newest event and keep the recent history, without publishing it."""
        high = self._last_id()
        events = self._read(max(0, high - (self._recent.maxlen or 0)))
        owners = self._owners(events)
        self._prime_decisions(high - (self._recent.maxlen or 0))
        for event in events:
            self._keep(event, owners.get(event.job_id) if event.job_id else None)
        self._high = max([high, *(e.id for e in events)])
        self._seen = {e.id for e in events if e.id > self._high - self.window_ids}

    def _prime_decisions(self, below: int) -> None:
        """The manager's decisions older than the recent history, read backwards in pages
        (at most `_PAGES_PER_POLL` of them)."""
        older: list[Event] = []
        start = below
        for _ in range(_PAGES_PER_POLL):
            if start <= 0 or len(older) >= DECISIONS_MAX:
                break
            start = max(0, start - PAGE)
            page = [e for e in self._store.events(None, start, PAGE) if e.id <= below]
            older = [e for e in page if e.kind.startswith("manager_")] + older
            below = start
        self._decisions.extend(older[-DECISIONS_MAX:])

    def _last_id(self) -> int:
        """The highest event id, by galloping then bisecting on `events(after_id, limit=1)`."""
        low, step = 0, 1024
        while self._store.events(None, low + step, 1):
            low, step = low + step, step * 2
        high = low + step  # no event above `high`, and one above `low` unless there is none
        while high - low > 1:
            mid = (low + high) // 2
            if self._store.events(None, mid, 1):
                low = mid
            else:
                high = mid
        return high if self._store.events(None, low, 1) else low

    def _read(self, after_id: int) -> list[Event]:
        found: list[Event] = []
        for _ in range(_PAGES_PER_POLL):
            page = self._store.events(None, after_id, PAGE)
            found.extend(page)
            if len(page) < PAGE:
                break
            after_id = page[-1].id
        return found

    def _poll(self) -> list[tuple[Event, str | None]]:
        """Events not seen yet, in id order, with their jobs' owners."""
        start = max(0, self._high - self.window_ids)
        fresh = [e for e in self._read(start) if e.id not in self._seen]
        if not fresh:
            return []
        self._high = max(self._high, *(e.id for e in fresh))
        floor = self._high - self.window_ids
        self._seen = {i for i in self._seen if i > floor} | {e.id for e in fresh if e.id > floor}
        owners = self._owners(fresh)
        return [(e, owners.get(e.job_id) if e.job_id else None) for e in fresh]

    def _owners(self, events: Iterable[Event]) -> dict[int, str]:
        ids = tuple({e.job_id for e in events if e.job_id is not None})
        if not ids:
            return {}
        jobs = self._store.list_jobs(JobFilter(ids=ids, limit=None))
        return {j.id: j.owner for j in jobs}

    # --- fanning out (on the loop) ----------------------------------------------------------
    def _keep(self, event: Event, owner: str | None) -> LiveEvent:
        self._seq += 1
        live = LiveEvent(self._seq, event, owner)
        self._recent.append(live)
        if event.kind.startswith("manager_"):
            self._decisions.append(event)
        return live

    def _publish(self, event: Event, owner: str | None) -> None:
        live = self._keep(event, owner)
        for sub in list(self._subscribers):
            sub.offer(live)

    def subscribe(self, principal: Principal, last_id: str | None) -> tuple[Subscriber, bool]:
        """A new follower, with what it missed since `last_id` already queued; the flag says
        the page must load afresh (no usable `last_id`, or too much was missed)."""
        sub = Subscriber(principal, self.queue_max)
        self._subscribers.add(sub)
        after = self._seq_of(last_id)
        oldest = self._recent[0].seq if self._recent else self._seq + 1
        if after is None or after + 1 < oldest or after > self._seq:
            return sub, True
        for live in self._recent:  # the replay: as long as the history kept, not the queue
            if live.seq > after and live.visible_to(principal):
                sub.queue.put_nowait(live)
        return sub, False

    def _seq_of(self, last_id: str | None) -> int | None:
        epoch, _, seq = (last_id or "").partition("-")
        return int(seq) if epoch == self.epoch and seq.isdigit() else None

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    def recent(self, principal: Principal, limit: int) -> list[Event]:
        """The newest events `principal` may see, newest first."""
        shown: list[Event] = []
        for live in reversed(self._recent):
            if len(shown) >= limit:
                break
            if live.visible_to(principal):
                shown.append(live.event)
        return shown

    def decisions(self, limit: int) -> list[Event]:
        """The resource manager's newest decisions (events `manager_*`), newest first."""
        return list(reversed(self._decisions))[:limit]

    @property
    def followers(self) -> int:
        return len(self._subscribers)


async def stream(hub: EventHub, sub: Subscriber, reset: bool) -> AsyncIterator[bytes]:
    """The text/event-stream of one follower until it is dropped or the hub stops."""
    try:
        yield f"retry: {RETRY_MS}\n".encode()
        if reset:
            yield b"event: reset\ndata: {}\n\n"
        quiet_s = 0.0
        while not hub.stopping:
            try:
                live = await asyncio.wait_for(sub.queue.get(), SLICE_S)
            except TimeoutError:
                quiet_s += SLICE_S
                if quiet_s >= KEEPALIVE_S:
                    quiet_s = 0.0
                    yield b": keepalive\n\n"
                continue
            if live is None:
                break
            quiet_s = 0.0
            data = json.dumps(live.as_json(), separators=(",", ":"))
            yield f"id: {hub.epoch}-{live.seq}\ndata: {data}\n\n".encode()
    finally:
        hub.unsubscribe(sub)
