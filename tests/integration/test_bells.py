"""Doorbells of the SQLite engine: one idle agent per ring, passed on, relays hear every ring."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clobi.store.base import ClaimRequest
from clobi.store.bells import Bell, Bells
from clobi.store.sqlite import SqliteStore
from tests.conftest import capacity, make_agent, make_submission


@pytest.fixture
def bells(tmp_path: Path) -> Iterator[Bells]:
    """Bells whose listeners are all closed at the end of the test."""
    made: list[Bell] = []
    found = Bells(tmp_path / "bells")
    listen = found.listen

    def tracked(name: str, agent: bool = False) -> Bell:
        made.append(listen(name, agent))
        return made[-1]

    found.listen = tracked  # type: ignore[method-assign]
    yield found
    for bell in made:
        bell.close()


def _rung(*bells: Bell) -> list[bool]:
    return [b.rang() for b in bells]


def test_a_ring_wakes_one_idle_agent_and_every_relay(bells: Bells) -> None:
    a, b = bells.listen("agent-1", agent=True), bells.listen("agent-2", agent=True)
    relay = bells.listen("server-x")
    bells.ring()
    assert sorted(_rung(a, b)) == [False, True]
    assert relay.rang()


def test_an_idle_agent_is_woken_before_a_busy_one(bells: Bells) -> None:
    busy, idle = bells.listen("agent-1", agent=True), bells.listen("agent-2", agent=True)
    busy.want(idle=False)
    for _ in range(5):
        bells.ring()
        assert _rung(busy, idle) == [False, True]
    idle.want(idle=False)
    bells.ring()  # nobody idle: a busy one hears it rather than nobody
    assert sorted(_rung(busy, idle)) == [False, True]


def test_a_ring_skips_agents_that_are_gone_and_forgets_them(bells: Bells) -> None:
    gone, alive = bells.listen("agent-1", agent=True), bells.listen("agent-2", agent=True)
    gone._sock.close()  # died without closing its bell: the marker stays behind
    for _ in range(5):
        bells.ring()
        assert alive.rang()
    assert sorted(p.name for p in bells.folder.iterdir()) == ["agent-2.idle"]


def test_a_passed_on_ring_stops_after_every_agent_had_it(bells: Bells) -> None:
    a, b = bells.listen("agent-1", agent=True), bells.listen("agent-2", agent=True)
    bells.ring(hops=1, skip="agent-1")
    assert _rung(a, b) == [False, True]
    assert b.take_ring() == 1
    bells.ring(hops=2, skip="agent-2")  # agent-1 had the first ring: two agents, two hops
    assert _rung(a, b) == [False, False]


def test_an_agent_woken_for_more_than_it_can_take_passes_the_ring_on(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.db")
    ids = [store.register_agent(make_agent(name=f"a{k}")) for k in range(2)]
    first, second = (store.listen(f"agent-{i}") for i in ids)
    assert isinstance(first, Bell) and isinstance(second, Bell)
    try:
        store.submit(make_submission(count=3))
        rung = _rung(first, second)
        assert sorted(rung) == [False, True]
        woken, other = (first, second) if rung[0] else (second, first)
        agent_id = ids[0] if rung[0] else ids[1]
        claims = store.claim(ClaimRequest(agent_id, capacity(), 2, 60.0))
        assert len(claims) == 2  # a full batch: one job may be left, the other agent hears
        assert other.rang()
        assert woken.marker.name.endswith(".busy")
        assert store.claim(ClaimRequest(agent_id, capacity(), 2, 60.0))
        assert woken.marker.name.endswith(".idle")  # it got less than it asked for
    finally:
        first.close()
        second.close()
        store.close()


def test_an_idle_agent_checkpoints_the_wal(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.db")
    agent_id = store.register_agent(make_agent())
    bell = store.listen(f"agent-{agent_id}")
    assert bell is not None
    try:
        for _ in range(70):
            store.submit(make_submission())
        assert store.claim(ClaimRequest(agent_id, capacity(), 100, 60.0))  # found it empty
        busy, log_frames, done = store._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert (busy, log_frames) == (0, done)
        assert store._commits == 0
    finally:
        bell.close()
        store.close()
