"""The outlets' loop: crash-only, one active per session (elected through the store's lock
`outlets`), one thread per outlet so that a slow web hook does not hold up the broker.

While elected, each outlet's thread takes the oldest events waiting for it in the outbox,
sends them, deletes what was delivered and schedules the first failure's next try (the events
after it wait: order per job is kept). It polls every `poll_s` when there is nothing to send,
and loops at once while full batches keep coming. Everything it knows is in the store, so a
runner killed at any point and started again (here or elsewhere) carries on, sending again at
most the batch it was sending.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from clobi.errors import ClobiError, MissingExtra
from clobi.outlets.base import Outlet
from clobi.outlets.config import OutletsConfig, read_outlets

if TYPE_CHECKING:
    from clobi.session import Session
    from clobi.store.base import Store

log = logging.getLogger("clobi.outlets")

LOCK = "outlets"
POLL_S = 0.2
LOCK_TTL_S = 10.0
RENEW_S = 1.0


class OutletRunner:
    """Delivers the session's events to `outlets` while it holds the `outlets` lock."""

    def __init__(
        self,
        store: Store,
        outlets: Sequence[Outlet],
        *,
        poll_s: float = POLL_S,
        lock_ttl_s: float = LOCK_TTL_S,
    ) -> None:
        self.store, self.outlets = store, list(outlets)
        self.poll_s, self.lock_ttl_s = poll_s, lock_ttl_s
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.elected = threading.Event()
        self._held_until = 0.0  # (monotonic) the lock is surely ours until then
        self.delivered: dict[str, int] = {o.name: 0 for o in self.outlets}
        self._wake = {o.name: threading.Event() for o in self.outlets}
        self._halt = threading.Event()
        self._failing: set[str] = set()

    # --- running -----------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Deliver until `stop` is set; then close the outlets."""
        workers = [
            threading.Thread(
                target=self._deliver_loop, args=(o,), name=f"clobi-outlet-{o.name}", daemon=True
            )
            for o in self.outlets
        ]
        for worker in workers:
            worker.start()
        try:
            while not stop.is_set():
                self._elect()
                stop.wait(min(RENEW_S, self.lock_ttl_s / 3))
        finally:
            self._halt.set()
            self.wake()
            for worker in workers:
                worker.join(timeout=60)
            for outlet in self.outlets:
                outlet.close()

    def wake(self) -> None:
        """Look at the outbox now rather than at the next poll."""
        for event in self._wake.values():
            event.set()

    def _elect(self) -> None:
        try:
            asked = time.monotonic()
            held = self.store.try_lock(LOCK, self.owner, self.lock_ttl_s)
            if held:
                self._held_until = asked + self.lock_ttl_s
            if held and not self.elected.is_set():
                self._take_office()
        except ClobiError as exc:
            log.warning("cannot reach the store (trying again): %s", exc)
            held = False
        if not held and self.elected.is_set():
            log.info("another runner delivers the events now")
            self.elected.clear()

    def _take_office(self) -> None:
        for outlet in self.outlets:
            self.store.enable_outlet(outlet.name)
        names = {o.name for o in self.outlets}
        for status in self.store.list_outlets():
            if status.enabled and status.name not in names:
                log.warning(
                    "outlet %r is enabled but not configured here; its %d events wait "
                    "(`clobi outlets disable %s` drops them)",
                    status.name,
                    status.pending,
                    status.name,
                )
        log.info("delivering events to %s", ", ".join(sorted(names)))
        self.elected.set()
        self.wake()

    def _deliver_loop(self, outlet: Outlet) -> None:
        wake = self._wake[outlet.name]
        while not self._halt.is_set():
            busy = False
            if self._in_office():
                try:
                    busy = self.deliver_once(outlet)
                except ClobiError as exc:
                    log.warning("%s: store: %s (trying again)", outlet.name, exc)
            if not busy:
                outlet.idle()
                wake.wait(self.poll_s)
                wake.clear()

    def _in_office(self) -> bool:
        # Also false when renewing has stalled (a store that hangs): past the lock's TTL
        # another runner may have taken over, and two would interleave their sends.
        return self.elected.is_set() and time.monotonic() < self._held_until

    # --- one batch ---------------------------------------------------------------------
    def deliver_once(self, outlet: Outlet) -> bool:
        """Send one batch of the outlet's waiting events; True when it was full and went
        through (more may be waiting)."""
        batch = self.store.take_deliveries(outlet.name, outlet.batch)
        if not batch:
            return False
        sent = outlet.send([d.event for d in batch])
        if sent.count:
            self.store.mark_delivered(outlet.name, [d.event.id for d in batch[: sent.count]])
            self.delivered[outlet.name] += sent.count
        if sent.count < len(batch):
            failed = batch[sent.count]
            delay = outlet.backoff.delay_s(failed.attempts + 1)
            self.store.mark_failed(outlet.name, failed.event.id, delay, sent.error)
            log.warning(
                "%s: event %d, try %d failed (next in %.1f s): %s",
                outlet.name,
                failed.event.id,
                failed.attempts + 1,
                delay,
                sent.error,
            )
            self._failing.add(outlet.name)
            return False
        if outlet.name in self._failing:
            self._failing.discard(outlet.name)
            log.info("%s: delivering again", outlet.name)
        return len(batch) == outlet.batch


def open_outlets(config: OutletsConfig) -> list[Outlet]:
    """The outlets a configuration declares (their drivers imported only when used)."""
    outlets: list[Outlet] = []
    try:
        if config.amqp is not None:
            from clobi.outlets.amqp import AmqpOutlet

            outlets.append(AmqpOutlet(config.amqp))
        if config.webhooks:
            from clobi.outlets.webhooks import WebhookOutlet

            outlets += [WebhookOutlet(w) for w in config.webhooks]
    except ImportError as exc:
        for outlet in outlets:
            outlet.close()
        raise MissingExtra(f"web hooks need httpx: `pip install clobi[server]` ({exc})") from None
    except BaseException:
        for outlet in outlets:
            outlet.close()
        raise
    return outlets


def session_outlets(session: Session, environ: Mapping[str, str] | None = None) -> OutletsConfig:
    """The outlets the session's clobi.toml declares (none for a URL session)."""
    from clobi.session import CONFIG_NAME

    if session.credentials is not None:
        return OutletsConfig()
    return read_outlets(session.root / CONFIG_NAME, os.environ if environ is None else environ)


class OutletThread:
    """The runner beside a server, in a thread of its own with its own store connection."""

    def __init__(self, session: Session, config: OutletsConfig) -> None:
        self.store = session.open_store()
        try:
            self.runner = OutletRunner(self.store, open_outlets(config))
        except BaseException:
            self.store.close()
            raise
        self.stopping = threading.Event()
        self.thread = threading.Thread(
            target=self.runner.run, args=(self.stopping,), name="clobi-outlets", daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=60)
        self.store.close()


def start_outlets(session: Session) -> OutletThread | None:
    """Run the outlets the session declares, if any, in a thread."""
    config = session_outlets(session)
    if not config.names:
        return None
    return OutletThread(session, config)
