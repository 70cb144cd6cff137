"""Log tails in the SQL store: the newest bytes of running attempts' stdout and stderr.

An agent pushes what its jobs wrote since its last push; the store keeps, per attempt and
stream, one row with the newest `LOG_TAIL_MAX_BYTES` and the stream offset they start at. A
follower on another machine reads from its own offset on. Rows of finished attempts are
dropped with the report; the final log is the output archive's.
"""

from __future__ import annotations

from collections.abc import Sequence

from clobi.store.base import LOG_STREAMS, LOG_TAIL_MAX_BYTES, LogTail
from clobi.store.sqlcore import Cursor, SqlCore


class SqlLogs(SqlCore):
    """Pushing and reading log tails."""

    def push_logs(self, agent_id: int, tails: Sequence[LogTail]) -> None:
        if not tails:
            return
        with self._tx() as cur:
            now = self._now()
            for tail in tails:
                if tail.stream not in LOG_STREAMS or not tail.data:
                    continue
                cur.execute(
                    self.q["attempt_running_of_agent"],
                    {"attempt_id": tail.attempt_id, "agent_id": agent_id},
                )
                if cur.fetchone() is None:
                    continue  # not this agent's running attempt (any more): ignored
                start, data = _merge(self._kept(cur, tail), tail)
                cur.execute(
                    self.q["upsert_log_tail"],
                    {
                        "attempt_id": tail.attempt_id,
                        "stream": tail.stream,
                        "start_offset": start,
                        "data": data,
                        "now": now,
                    },
                )

    def _kept(self, cur: Cursor, tail: LogTail) -> tuple[int, bytes] | None:
        cur.execute(
            self.q["select_log_tail"], {"attempt_id": tail.attempt_id, "stream": tail.stream}
        )
        row = cur.fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def read_log(self, job_id: int, stream: str, offset: int = 0) -> LogTail | None:
        with self._tx(write=False) as cur:
            cur.execute(self.q["log_tail_of_job"], {"job_id": job_id, "stream": stream})
            row = cur.fetchone()
        if row is None:
            return None
        start, data = int(row[1]), bytes(row[2])
        skip = min(max(0, offset - start), len(data))
        return LogTail(int(row[0]), stream, start + skip, data[skip:])


def _merge(kept: tuple[int, bytes] | None, tail: LogTail) -> tuple[int, bytes]:
    """The kept bytes with `tail` laid over them from its offset (a gap starts afresh),
    trimmed to the newest `LOG_TAIL_MAX_BYTES`."""
    if kept is None:
        start, data = tail.offset, tail.data
    else:
        start, old = kept
        if start <= tail.offset <= start + len(old):
            data = old[: tail.offset - start] + tail.data
        else:
            start, data = tail.offset, tail.data
    excess = len(data) - LOG_TAIL_MAX_BYTES
    if excess > 0:
        start, data = start + excess, data[excess:]
    return start, data
