"""The dashboard's live events: one tail of the store per server fanned out to every browser,
events that commit out of id order still delivered once, users confined to their own jobs,
slow followers dropped and caught up by `Last-Event-ID`, and the stream itself over HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from clobi.api.ui_events import EventHub, Subscriber
from clobi.errors import StoreUnavailable
from clobi.model.auth import Principal, Role
from clobi.model.records import Event, JobFilter, JobRecord
from clobi.model.states import JobState
from tests.integration.test_api_routes import Api, api, submit
from tests.integration.test_ui_auth import log_in

__all__ = ["api"]

ADMIN = Principal("a" * 16, Role.ADMIN, "root")
ALICE = Principal("b" * 16, Role.USER, "alice")
BOB = Principal("c" * 16, Role.USER, "bob")


def event(event_id: int, kind: str = "started", job_id: int | None = 1) -> Event:
    return Event(event_id, time.time(), job_id, None, None, kind, "queued", "running", "")


def job(job_id: int, owner: str) -> JobRecord:
    return JobRecord(
        id=job_id,
        spec_id=1,
        name="j",
        state=JobState.RUNNING,
        priority=0,
        array_index=None,
        created_at=0.0,
        updated_at=0.0,
        attempts=1,
        retries_left=0,
        lost_count=0,
        exit_code=None,
        reason="",
        tags=(),
        owner=owner,
        current_attempt=None,
        cancel_requested=False,
        not_before=0.0,
    )


class FakeStore:
    """Events the test makes visible in any order (as commits in PostgreSQL may), and jobs
    owned by alice (odd ids) and bob (even ids). Counts the calls."""

    def __init__(self) -> None:
        self.visible: dict[int, Event] = {}
        self.event_calls = 0
        self.failures = 0

    def show(self, *events: Event) -> None:
        for e in events:
            self.visible[e.id] = e

    def events(
        self, job_id: int | None = None, after_id: int = 0, limit: int = 1000
    ) -> list[Event]:
        self.event_calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailable("the store is away")
        found = sorted((e for i, e in self.visible.items() if i > after_id), key=lambda e: e.id)
        return found[:limit]

    def list_jobs(self, flt: JobFilter) -> list[JobRecord]:
        return [job(i, "alice" if i % 2 else "bob") for i in flt.ids]


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))


async def received(sub: Subscriber, count: int) -> list[int]:
    """The store ids of the next `count` events queued for `sub`."""
    ids = []
    for _ in range(count):
        live = await asyncio.wait_for(sub.queue.get(), 5)
        assert live is not None
        ids.append(live.event.id)
    return ids


def test_history_is_not_replayed_and_new_events_reach_every_follower_once() -> None:
    store = FakeStore()
    store.show(*(event(i) for i in range(1, 3001)))
    hub = EventHub(store, poll_s=0.01)

    async def scenario() -> None:
        await hub.started()
        subs = [hub.subscribe(ADMIN, None)[0] for _ in range(3)]
        store.show(event(3001), event(3002))
        for sub in subs:
            assert await received(sub, 2) == [3001, 3002]
        await asyncio.sleep(0.1)
        assert all(sub.queue.empty() for sub in subs)
        assert [e.id for e in hub.recent(ADMIN, 3)] == [3002, 3001, 3000]
        await hub.close()

    run(scenario)


def test_a_store_away_at_start_delays_the_tail_but_never_replays_history() -> None:
    store = FakeStore()
    store.show(*(event(i) for i in range(1, 51)))
    store.failures = 2
    hub = EventHub(store, poll_s=0.01)

    async def scenario() -> None:
        await hub.started()  # pages do not wait for the store to come back
        sub, _ = hub.subscribe(ADMIN, None)
        await asyncio.sleep(2.5)  # the tail tries reading the history again each second
        assert store.failures == 0
        store.show(event(51))
        assert await received(sub, 1) == [51]
        await asyncio.sleep(0.1)
        assert sub.queue.empty()
        await hub.close()

    run(scenario)


def test_an_event_committed_after_a_higher_id_is_still_delivered_once() -> None:
    store = FakeStore()
    store.show(event(1))
    hub = EventHub(store, poll_s=0.01, window_ids=64)

    async def scenario() -> None:
        await hub.started()
        sub, reset = hub.subscribe(ADMIN, None)
        assert reset
        store.show(event(3), event(5))  # 2 and 4 are still being committed
        assert await received(sub, 2) == [3, 5]
        store.show(event(4), event(2))
        assert sorted(await received(sub, 2)) == [2, 4]
        store.show(event(6))
        assert await received(sub, 1) == [6]
        await asyncio.sleep(0.1)
        assert sub.queue.empty()
        await hub.close()

    run(scenario)


def test_one_tail_reads_the_store_however_many_follow() -> None:
    store = FakeStore()
    hub = EventHub(store, poll_s=0.05)

    async def scenario() -> None:
        await hub.started()
        for _ in range(200):
            hub.subscribe(ADMIN, None)
        calls = store.event_calls
        await asyncio.sleep(1.0)
        per_second = store.event_calls - calls
        assert per_second <= 1.0 / 0.05 + 2  # one read per poll, not one per follower
        assert hub.followers == 200
        await hub.close()

    run(scenario)


def test_users_follow_their_own_jobs_and_the_agents_only() -> None:
    store = FakeStore()
    hub = EventHub(store, poll_s=0.01)

    async def scenario() -> None:
        await hub.started()
        alice, bob, admin = (hub.subscribe(p, None)[0] for p in (ALICE, BOB, ADMIN))
        store.show(
            event(1, job_id=1),  # alice's
            event(2, job_id=2),  # bob's
            event(3, "agent_up", None),
            event(4, "manager_launch", None),
            event(5, "token_revoked", None),
        )
        assert await received(admin, 5) == [1, 2, 3, 4, 5]
        assert await received(alice, 2) == [1, 3]
        assert await received(bob, 2) == [2, 3]
        await asyncio.sleep(0.1)
        assert alice.queue.empty() and bob.queue.empty()
        assert [e.id for e in hub.decisions(10)] == [4]
        await hub.close()

    run(scenario)


def test_a_slow_follower_is_dropped_and_catches_up_with_its_last_event_id() -> None:
    store = FakeStore()
    hub = EventHub(store, poll_s=0.01, queue_max=5)

    async def scenario() -> None:
        await hub.started()
        slow, _ = hub.subscribe(ADMIN, None)
        store.show(event(1))
        first = await asyncio.wait_for(slow.queue.get(), 5)
        assert first is not None and first.event.id == 1
        last = f"{hub.epoch}-{first.seq}"
        store.show(*(event(i) for i in range(2, 12)))
        await asyncio.sleep(0.2)
        assert slow.dropped
        hub.unsubscribe(slow)
        again, reset = hub.subscribe(ADMIN, last)
        assert not reset
        assert await received(again, 10) == list(range(2, 12))
        _, reset = hub.subscribe(ADMIN, "another-epoch-1")  # a restarted server
        assert reset
        await hub.close()

    run(scenario)


def test_the_stream_pushes_a_submitted_job_to_the_browser_within_a_second(api: Api) -> None:
    alice = api.token(Role.USER, "alice")
    browser = log_in(api, alice)
    seen: list[dict[str, Any]] = []
    with browser.http.stream("GET", "/ui/events", timeout=10) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert next(lines).startswith("retry:")
        assert next(lines) == "event: reset"
        started = time.time()
        (job_id,) = submit(api, alice)
        submit(api, api.token(Role.USER, "bob"))  # not alice's: never sent to her
        for line in lines:
            if line.startswith('data: {"'):
                seen.append(json.loads(line[len("data: ") :]))
                break
        took = time.time() - started
    assert [(e["job_id"], e["kind"]) for e in seen] == [(job_id, "submitted")]
    assert took < 1.0, took
