"""What the SQL engines share: transactions, named queries, row mapping, events.

Engines (`sqlite`, later `postgres`) provide connections and `_tx()`; the behaviour lives in
`sqljobs` (submitting, reading, user actions), `sqlclaims` (claims, reports) and `sqlwork`
(agents, leases, sweeping), written once over this core.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from clobi.model.records import AttemptRecord, Event, JobRecord
from clobi.model.spec import JobSpec
from clobi.model.states import AttemptState, JobState
from clobi.store import queries


class Cursor(Protocol):
    """The part of a DB-API cursor the SQL store uses."""

    def execute(self, sql: str, params: Any = ..., /) -> Any: ...
    def executemany(self, sql: str, params: Any, /) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...

    @property
    def rowcount(self) -> int: ...


class SqlCore:
    """Shared plumbing for SQL engines."""

    q: dict[str, str]

    def __init__(self) -> None:
        self.q = queries.load()
        self._spec_cache: dict[int, tuple[JobSpec, str | None]] = {}

    # Engines implement these two.
    def _tx(self, write: bool = True, durable: bool = True) -> AbstractContextManager[Cursor]:
        """A transaction (joined if this thread has one open). `durable=False` marks one
        whose loss in a power failure the contract tolerates (a claim alone: its jobs would
        be queued again, and run again, as after a crashed agent); an engine may commit it
        without flushing."""
        raise NotImplementedError

    def _insert(self, cur: Cursor, query: str, params: dict[str, Any]) -> int:
        """Run an INSERT and return the new row id."""
        raise NotImplementedError

    @staticmethod
    def _now() -> float:
        return time.time()

    def _event(
        self,
        cur: Cursor,
        now: float,
        kind: str,
        job_id: int | None = None,
        *,
        attempt_id: int | None = None,
        agent_id: int | None = None,
        from_state: str = "",
        to_state: str = "",
        detail: str = "",
    ) -> None:
        row = event_row(now, kind, job_id, attempt_id, agent_id, from_state, to_state, detail)
        cur.execute(self.q["insert_event"], row)

    def _insert_events(self, cur: Cursor, events: Sequence[dict[str, Any]]) -> None:
        """Append `event_row`s in their order (one executemany; engines may do better)."""
        if events:
            cur.executemany(self.q["insert_event"], events)

    def _spec(self, cur: Cursor, spec_id: int) -> tuple[JobSpec, str | None]:
        """A spec by id, parsed once per store (arrays share one spec row)."""
        hit = self._spec_cache.get(spec_id)
        if hit is None:
            cur.execute(self.q["spec_by_id"], {"spec_id": spec_id})
            row = cur.fetchone()
            hit = (JobSpec.from_json(row[0]), row[1])
            if len(self._spec_cache) > 4096:
                self._spec_cache.clear()
            self._spec_cache[spec_id] = hit
        return hit

    def _tags(self, cur: Cursor, spec_ids: set[int]) -> dict[int, tuple[str, ...]]:
        if not spec_ids:
            return {}
        ids = ",".join(str(int(i)) for i in spec_ids)
        cur.execute(self.q["tags_of_specs"].format(ids=ids))
        tags: dict[int, list[str]] = {}
        for spec_id, tag in cur.fetchall():
            tags.setdefault(spec_id, []).append(tag)
        return {k: tuple(v) for k, v in tags.items()}


def event_row(  # noqa: PLR0917 - a row, positional like the table
    now: float,
    kind: str,
    job_id: int | None,
    attempt_id: int | None,
    agent_id: int | None,
    from_state: str = "",
    to_state: str = "",
    detail: str = "",
) -> dict[str, Any]:
    """Parameters of one `insert_event`, for batching with executemany."""
    return {
        "now": now,
        "job_id": job_id,
        "attempt_id": attempt_id,
        "agent_id": agent_id,
        "kind": kind,
        "from_state": from_state,
        "to_state": to_state,
        "detail": detail,
    }


def job_from_row(row: Sequence[Any], tags: tuple[str, ...]) -> JobRecord:
    return JobRecord(
        id=row[0],
        spec_id=row[1],
        name=row[2],
        state=JobState(row[3]),
        priority=row[4],
        array_index=row[5],
        created_at=row[6],
        updated_at=row[7],
        attempts=row[8],
        retries_left=row[9],
        lost_count=row[10],
        exit_code=row[11],
        reason=row[12],
        tags=tags,
        owner=row[13],
        current_attempt=row[14],
        cancel_requested=bool(row[15]),
        not_before=row[16],
    )


def attempt_from_row(row: Sequence[Any]) -> AttemptRecord:
    return AttemptRecord(
        id=row[0],
        job_id=row[1],
        agent_id=row[2],
        agent_name=row[3],
        state=AttemptState(row[4]),
        started_at=row[5],
        ended_at=row[6],
        lease_until=row[7],
        exit_code=row[8],
        reason=row[9],
        workdir=f"{row[10]}/{row[0]}" if row[10] else "",
        has_output=bool(row[11]),
    )


def event_from_row(row: Sequence[Any]) -> Event:
    return Event(
        id=row[0],
        ts=row[1],
        job_id=row[2],
        attempt_id=row[3],
        agent_id=row[4],
        kind=row[5],
        from_state=row[6],
        to_state=row[7],
        detail=row[8],
    )


def labels_text(labels: Iterator[str] | Sequence[str] | frozenset[str]) -> str:
    return json.dumps(sorted(labels))
