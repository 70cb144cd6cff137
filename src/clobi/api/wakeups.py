"""Waking long-polling agents when work may have appeared.

One subscription to the store's wake-ups per server process (`store.listen()`, a readable fd
watched with `loop.add_reader`) wakes the requests waiting in this process. Engines without
wake-ups make waiters re-check on a short period instead.

A ring wakes one waiting agent, not all of them: with N idle agents, waking all for one new job
costs N claims of which N-1 find nothing. The agent woken is one whose last claim found less
than it asked for (it has room and no work), else the one that has waited longest. The ring is
passed on to the next waiting agent when the woken one claims a full batch (more may be
queued), or claims nothing within `HANDOFF_S` (it was busy, or went away); each waiting agent
is woken at most once per ring. So a big submit still reaches every idle agent, one claim
after the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from clobi.store.base import Store, Wakeup

POLL_WITHOUT_WAKEUPS_S = 1.0
SLICE_S = 1.0  # how often a waiter checks whether its client or the server is going away
HANDOFF_S = 0.25  # how long a woken agent has to claim before the next one is woken
HUNGRY_MAX = 10_000  # agents remembered as having found the queue empty


def _future() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


@dataclass(eq=False)
class _Waiter:
    """One long-poll: the agent it is for, and the future that wakes it."""

    agent_id: int
    woken: asyncio.Future[None] = field(default_factory=_future)


class Doorbell:
    """The store's wake-ups, handed to long-polls of one event loop one agent at a time."""

    def __init__(self) -> None:
        self._rings = 0  # tickets are this count: a ring after a ticket was taken shows
        self._waiters: deque[_Waiter] = deque()  # oldest first
        self._hungry: dict[int, None] = {}  # agents whose last claim got less than asked
        self._expected: dict[int, asyncio.TimerHandle] = {}  # woken agents, until they claim
        self._tried: set[int] = set()  # agents woken since the last ring
        self._owed = False  # a ring found nobody waiting: the next waiter looks at once
        self._wakeup: Wakeup | None = None
        self.stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, store: Store) -> None:
        """Subscribe to the store's wake-ups (call from the event loop)."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = store.listen(f"server-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        if self._wakeup is not None:
            self._loop.add_reader(self._wakeup.fileno(), self._on_readable)

    def stop(self) -> None:
        for handle in self._expected.values():
            handle.cancel()
        self._expected.clear()
        if self._wakeup is None:
            return
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._wakeup.fileno())
        self._wakeup.close()
        self._wakeup = None

    def ticket(self) -> int:
        """Take before looking for work; `wait` with it afterwards, so a ring in between counts."""
        return self._rings

    async def wait(
        self,
        ticket: int,
        agent_id: int,
        timeout_s: float,
        gone: Callable[[], Awaitable[bool]] | None = None,
    ) -> bool:
        """Wait until this agent is woken, or `timeout_s`; True if woken (or the doorbell rang
        since `ticket` was taken).

        Gives up early when `gone()` says the client went away, or the server is stopping
        (long-polls must not hold a shutdown up); a wake it got meanwhile goes to the next."""
        if self._rings != ticket:
            return True
        if self._owed:
            self._owed = False
            self._expect(agent_id)
            return True
        if self._wakeup is None:
            timeout_s = min(timeout_s, POLL_WITHOUT_WAKEUPS_S)
        waiter = _Waiter(agent_id)
        self._waiters.append(waiter)
        try:
            return await self._wait(waiter, time.monotonic() + timeout_s, gone)
        finally:
            if not waiter.woken.done():  # not woken: leave the queue
                waiter.woken.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    async def _wait(
        self, waiter: _Waiter, deadline: float, gone: Callable[[], Awaitable[bool]] | None
    ) -> bool:
        while not self.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.wait({waiter.woken}, timeout=min(left, SLICE_S))
            if waiter.woken.done():
                return True
            if gone is not None and await gone():
                return False
        return False

    def claimed(self, agent_id: int, wanted: int, got: int) -> None:
        """Agent `agent_id` claimed `got` of the `wanted` jobs it asked for: pass a ring on
        when it was woken by one and took a full batch (more may be waiting)."""
        if wanted <= 0:
            return
        if got < wanted:
            self._hungry.pop(agent_id, None)
            self._hungry[agent_id] = None  # the most recently hungry last
            if len(self._hungry) > HUNGRY_MAX:
                del self._hungry[next(iter(self._hungry))]
        else:
            self._hungry.pop(agent_id, None)
        handle = self._expected.pop(agent_id, None)
        if handle is not None:
            handle.cancel()
            if got >= wanted:
                self._wake_one()

    def stop_waiting(self) -> None:
        """End every long-poll soon (safe to call from a signal handler: sets a flag)."""
        self.stopping = True

    def ring(self) -> None:
        """Work may have appeared: wake one waiting agent (the others only if it asks for
        more than there is to have, or does not come)."""
        self._rings += 1
        self._tried.clear()
        if not self._wake_one():
            self._owed = True

    def _wake_one(self) -> bool:
        waiter = self._pick()
        if waiter is None:
            return False
        waiter.woken.set_result(None)
        self._expect(waiter.agent_id)
        return True

    def _pick(self) -> _Waiter | None:
        """The waiter to wake: the longest waiting hungry agent, else the longest waiting one,
        among agents not yet woken since the last ring."""
        chosen = None
        for waiter in self._waiters:
            if waiter.agent_id in self._tried or waiter.woken.done():
                continue
            if waiter.agent_id in self._hungry:
                chosen = waiter
                break
            if chosen is None:
                chosen = waiter
        if chosen is not None:
            self._waiters.remove(chosen)
            self._tried.add(chosen.agent_id)
        return chosen

    def _expect(self, agent_id: int) -> None:
        """Give a woken agent `HANDOFF_S` to claim, else wake the next."""
        if self._loop is None:
            return
        old = self._expected.pop(agent_id, None)
        if old is not None:
            old.cancel()
        self._expected[agent_id] = self._loop.call_later(HANDOFF_S, self._not_claimed, agent_id)

    def _not_claimed(self, agent_id: int) -> None:
        self._expected.pop(agent_id, None)
        self._hungry.pop(agent_id, None)  # it had no room after all
        self._wake_one()

    def _on_readable(self) -> None:
        if self._wakeup is not None and self._wakeup.rang():
            self.ring()
