"""Waking long-polling agents when work may have appeared.

One subscription to the store's wake-ups per server process (`store.listen()`, a readable fd
watched with `loop.add_reader`) fans out to every waiting request. Engines without wake-ups
make waiters re-check on a short period instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable

from clobi.store.base import Store, Wakeup

POLL_WITHOUT_WAKEUPS_S = 1.0
SLICE_S = 1.0  # how often a waiter checks whether its client or the server is going away


class Doorbell:
    """A broadcast of the store's wake-ups to coroutines in one event loop."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._wakeup: Wakeup | None = None
        self.stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, store: Store) -> None:
        """Subscribe to the store's wake-ups (call from the event loop)."""
        self._wakeup = store.listen(f"server-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        if self._wakeup is not None:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._wakeup.fileno(), self._on_readable)

    def stop(self) -> None:
        if self._wakeup is None:
            return
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._wakeup.fileno())
        self._wakeup.close()
        self._wakeup = None

    def ticket(self) -> asyncio.Event:
        """Take before looking for work; `wait` on it afterwards, so a ring in between counts."""
        return self._event

    async def wait(
        self,
        ticket: asyncio.Event,
        timeout_s: float,
        gone: Callable[[], Awaitable[bool]] | None = None,
    ) -> bool:
        """Wait until a ring after `ticket` was taken, or `timeout_s`; True if it rang.

        Gives up early when `gone()` says the client went away, or the server is stopping
        (long-polls must not hold a shutdown up)."""
        if self._wakeup is None:
            timeout_s = min(timeout_s, POLL_WITHOUT_WAKEUPS_S)
        deadline = time.monotonic() + timeout_s
        while not self.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(ticket.wait(), timeout=min(left, SLICE_S))
            except TimeoutError:
                if gone is not None and await gone():
                    return False
            else:
                return True
        return False

    def stop_waiting(self) -> None:
        """End every long-poll soon (safe to call from a signal handler: sets a flag)."""
        self.stopping = True

    def ring(self) -> None:
        """Wake every waiter (also used when this server itself created claimable work)."""
        self._event.set()
        self._event = asyncio.Event()

    def _on_readable(self) -> None:
        if self._wakeup is not None and self._wakeup.rang():
            self.ring()
