"""The server's sweeper: expired leases become lost attempts and requeued jobs.

Every replica runs this task, but only the holder of the store's `sweeper` lock sweeps, so N
replicas sweep once. Remote agents never sweep.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid

from fastapi.concurrency import run_in_threadpool

from clobi.errors import ClobiError
from clobi.session import Settings
from clobi.store.base import Store

log = logging.getLogger("clobi.api.sweeper")


class Sweeper:
    """Sweeps the store every `settings.sweep_interval_s` while it holds the lock."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store, self.settings = store, settings
        self.owner = f"server:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    async def run(self) -> None:
        """Sweep until cancelled."""
        while True:
            await run_in_threadpool(self.sweep_once)
            await asyncio.sleep(self.settings.sweep_interval_s)

    def sweep_once(self) -> bool:
        """One turn; True when this replica held the lock and swept."""
        s = self.settings
        try:
            if not self.store.try_lock("sweeper", self.owner, s.sweep_interval_s * 3):
                return False
            result = self.store.sweep(s.lost_cap, s.agent_timeout_s)
        except ClobiError as exc:
            log.warning("sweep failed: %s", exc.message)
            return False
        if result.lost_attempts:
            log.info("swept: lost attempts %s", list(result.lost_attempts))
        return True
