"""What running jobs wrote since the agent last told the store: the tails a follower on
another machine reads (`clobi logs -f` on a shared session).

Each heartbeat the agent reads, per running attempt and stream, the bytes past what it has
pushed, at most `PUSH_MAX_BYTES` (the newest ones when a job writes faster), and pushes them
in one call. Offsets advance only after the store took them, so a failed push is resent whole.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from clobi.store.base import LOG_STREAMS, LogTail

PUSH_MAX_BYTES = 256 * 1024  # per attempt and stream and push


class LogTails:
    """Offsets pushed so far, per (attempt id, stream)."""

    def __init__(self, push_max_bytes: int = PUSH_MAX_BYTES) -> None:
        self.push_max_bytes = push_max_bytes
        self.pushed: dict[tuple[int, str], int] = {}

    def collect(self, running: Iterable[tuple[int, str]]) -> list[LogTail]:
        """The new bytes of the logs of running attempts, given as (attempt id, attempt
        directory); forgets the attempts not given."""
        tails = []
        live = set()
        for attempt_id, root in running:
            live.add(attempt_id)
            for stream in LOG_STREAMS:
                tail = self._read(attempt_id, root, stream)
                if tail is not None:
                    tails.append(tail)
        for key in [k for k in self.pushed if k[0] not in live]:
            del self.pushed[key]
        return tails

    def _read(self, attempt_id: int, root: str, stream: str) -> LogTail | None:
        done = self.pushed.get((attempt_id, stream), 0)
        try:
            fd = os.open(f"{root}/{stream}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            size = os.fstat(fd).st_size
            if size <= done:
                return None
            start = max(done, size - self.push_max_bytes)
            data = os.pread(fd, size - start, start)
        except OSError:
            return None
        finally:
            os.close(fd)
        return LogTail(attempt_id, stream, start, data) if data else None

    def sent(self, tails: Iterable[LogTail]) -> None:
        """The store has these: next time, read on from their ends."""
        for t in tails:
            self.pushed[(t.attempt_id, t.stream)] = t.offset + len(t.data)
