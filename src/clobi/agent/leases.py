"""Keeping leases alive while the agent's loop is busy staging a large sandbox.

The agent's loop is single-threaded: while it downloads a job's input or uploads an output it
cannot heartbeat, and a transfer longer than the lease would get its attempts judged lost.
Around such a transfer the loop hands the ids it holds to this keeper, a thread that renews
them every heartbeat until the transfer ends; the loop then takes over again with the leases
the keeper renewed. Small jobs never start the thread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from clobi.errors import ClobiError
from clobi.store.base import Store

log = logging.getLogger("clobi.agent")


class LeaseKeeper:
    """Renews a set of attempts' leases from a thread, only while `covering` them."""

    def __init__(
        self, store: Store, agent_id: Callable[[], int], lease_s: float, heartbeat_s: float
    ) -> None:
        self.store, self.agent_id = store, agent_id
        self.lease_s, self.heartbeat_s = lease_s, heartbeat_s
        self._ids: tuple[int, ...] = ()
        self._covering = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.renewed: dict[int, float] = {}  # attempt id -> monotonic time of its last renewal

    @contextlib.contextmanager
    def covering(self, ids: Sequence[int]) -> Iterator[None]:
        """Renew these attempts' leases every heartbeat until the block ends."""
        self.renewed = {}
        self._ids = tuple(ids)
        self._start()
        self._covering.set()
        try:
            yield
        finally:
            self._covering.clear()

    def close(self) -> None:
        self._done.set()
        self._covering.set()  # let the thread see `_done`
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="clobi-leases", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            self._covering.wait()
            started = time.monotonic()
            while self._covering.is_set() and not self._done.is_set():
                if self._done.wait(
                    timeout=max(0.05, self.heartbeat_s - (time.monotonic() - started))
                ):
                    return
                if self._covering.is_set():
                    self._renew()
                    started = time.monotonic()

    def _renew(self) -> None:
        ids = self._ids
        try:
            reply = self.store.heartbeat(self.agent_id(), ids, self.lease_s)
        except ClobiError as exc:
            log.warning("heartbeat during a transfer failed: %s", exc)
            return
        now = time.monotonic()
        for attempt_id in reply.renewed:
            self.renewed[attempt_id] = now
