"""The server's doorbell wakes waiting agents one at a time: the hungry one first, the next
when the woken one takes a full batch or does not claim in time, each at most once per ring."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest

from clobi.api import wakeups
from clobi.api.wakeups import Doorbell
from clobi.store.base import Store


class NoWakeups:
    def listen(self, name: str) -> None:
        return None


def run(scenario: Callable[[Doorbell], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        bell = Doorbell()
        bell.start(cast(Store, NoWakeups()))
        try:
            return await scenario(bell)
        finally:
            bell.stop()

    return asyncio.run(main())


async def waiting(bell: Doorbell, *agents: int, timeout_s: float = 0.5) -> list[asyncio.Task[bool]]:
    """One long-poll per agent, queued in this order."""
    tasks = []
    for agent in agents:
        tasks.append(asyncio.create_task(bell.wait(bell.ticket(), agent, timeout_s)))
        await asyncio.sleep(0)
    return tasks


async def woken(tasks: list[asyncio.Task[bool]], within_s: float = 0.05) -> list[bool]:
    await asyncio.sleep(within_s)
    return [t.done() and t.result() for t in tasks]


@pytest.fixture(autouse=True)
def quick_handoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wakeups, "HANDOFF_S", 0.1)


def test_a_ring_wakes_the_longest_waiting_agent_only() -> None:
    async def scenario(bell: Doorbell) -> list[bool]:
        tasks = await waiting(bell, 1, 2, 3)
        bell.ring()
        bell.claimed(1, 4, 1)  # it took what there was
        found = await woken(tasks)
        await asyncio.gather(*tasks)
        return found

    assert run(scenario) == [True, False, False]


def test_an_agent_that_found_the_queue_empty_is_woken_first() -> None:
    async def scenario(bell: Doorbell) -> list[bool]:
        bell.claimed(3, 4, 0)
        tasks = await waiting(bell, 1, 2, 3)
        bell.ring()
        bell.claimed(3, 4, 2)
        found = await woken(tasks)
        await asyncio.gather(*tasks)
        return found

    assert run(scenario) == [False, False, True]


def test_a_full_batch_passes_the_ring_on_and_a_partial_one_ends_it() -> None:
    async def scenario(bell: Doorbell) -> list[bool]:
        tasks = await waiting(bell, 1, 2, 3)
        bell.ring()
        await asyncio.sleep(0)
        bell.claimed(1, 4, 4)  # there may be more
        await asyncio.sleep(0)
        bell.claimed(2, 4, 3)  # that was all
        found = await woken(tasks)
        await asyncio.gather(*tasks)
        return found

    assert run(scenario) == [True, True, False]


def test_a_woken_agent_that_does_not_claim_hands_the_ring_on_once() -> None:
    async def scenario(bell: Doorbell) -> tuple[list[bool], list[bool]]:
        tasks = await waiting(bell, 1, 2, timeout_s=1.0)
        bell.ring()
        first = await woken(tasks, within_s=0.05)
        again = await waiting(bell, 1, timeout_s=0.6)  # agent 1 polls again, still busy
        later = await woken([*tasks, *again], within_s=0.4)
        await asyncio.gather(*tasks, *again)
        return first, later

    first, later = run(scenario)
    assert first == [True, False]
    assert later == [True, True, False]  # agent 2 after the hand-off; agent 1 not twice


def test_a_ring_nobody_waited_for_goes_to_the_next_waiter() -> None:
    async def scenario(bell: Doorbell) -> list[bool]:
        bell.ring()
        tasks = await waiting(bell, 1, 2)
        found = await woken(tasks, within_s=0.01)
        await asyncio.gather(*tasks)
        return found

    assert run(scenario) == [True, False]


def test_a_ring_after_the_ticket_was_taken_counts() -> None:
    async def scenario(bell: Doorbell) -> bool:
        ticket = bell.ticket()
        bell.ring()  # e.g. while the claim that found nothing was running
        return await bell.wait(ticket, 1, 5.0)

    assert run(scenario) is True


def test_a_waiter_that_times_out_leaves_the_queue() -> None:
    async def scenario(bell: Doorbell) -> list[bool]:
        gone = await waiting(bell, 1, timeout_s=0.01)
        await asyncio.gather(*gone)
        tasks = await waiting(bell, 2)
        bell.ring()
        found = await woken(tasks)
        await asyncio.gather(*tasks)
        return [gone[0].result(), *found]

    assert run(scenario) == [False, True]
