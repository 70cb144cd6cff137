"""The outbox of event outlets in the SQL store.

A trigger on `events` (migration 0005) queues each new event for every enabled outlet, in the
transaction that inserts it: whatever changes state, its events reach the outbox exactly when
they commit, and no code path that appends events knows about outlets. An outlet's deliverer
takes its oldest entries in event id order and deletes them once they are delivered.

Why each job's events come out in order, on PostgreSQL too, where ids are handed out before
commit and transactions may commit out of id order: every transaction that appends an event
of a job first changes (so row-locks) that job, and appends the event after. A later change of
the job waits for the earlier transaction to commit, so its event gets a larger id and commits
later; a deliverer therefore never sees a job's later event without its earlier ones, and takes
them in id order. Events of different jobs may be delivered in any order. Entries are deleted,
never skipped with an id cursor, so an event that commits late is still delivered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from clobi.model.records import Event
from clobi.store.base import Delivery, OutletStatus
from clobi.store.sqlcore import Cursor, SqlCore

ERROR_MAX_CHARS = 1000  # of a failure's message kept with its delivery


class SqlOutbox(SqlCore):
    """Enabling outlets, and taking and marking their deliveries."""

    def enable_outlet(self, name: str) -> bool:
        with self._tx() as cur:
            cur.execute(self.q["enable_outlet"], {"name": name, "now": self._now()})
            return cur.rowcount == 1

    def disable_outlet(self, name: str) -> int:
        with self._tx() as cur:
            cur.execute(self.q["disable_outlet"], {"name": name, "now": self._now()})
            cur.execute(self.q["drop_deliveries"], {"outlet": name})
            return max(0, cur.rowcount)

    def take_deliveries(self, outlet: str, limit: int = 100) -> list[Delivery]:
        with self._tx(write=False) as cur:
            now = self._now()
            rows = _take(self, cur, outlet, limit)
        taken: list[Delivery] = []
        for row in rows:
            if row[2] > now:
                break  # backing off: the ones after it wait, so a job's events stay in order
            taken.append(_delivery(outlet, row))
        return taken

    def mark_delivered(self, outlet: str, event_ids: Sequence[int]) -> None:
        if not event_ids:
            return
        ids = ",".join(str(int(i)) for i in event_ids)
        with self._tx() as cur:
            cur.execute(self.q["delete_deliveries"].format(ids=ids), {"outlet": outlet})

    def mark_failed(self, outlet: str, event_id: int, retry_in_s: float, error: str) -> None:
        with self._tx() as cur:
            cur.execute(
                self.q["delivery_failed"],
                {
                    "outlet": outlet,
                    "event_id": event_id,
                    "next_try": self._now() + max(0.0, retry_in_s),
                    "error": error[:ERROR_MAX_CHARS],
                },
            )

    def list_outlets(self) -> list[OutletStatus]:
        with self._tx(write=False) as cur:
            cur.execute(self.q["select_outlets"])
            found = cur.fetchall()
            heads = {str(r[0]): _take(self, cur, str(r[0]), 1) for r in found if r[3]}
        return [
            OutletStatus(
                name=str(r[0]),
                enabled=bool(r[1]),
                since=float(r[2]),
                pending=int(r[3]),
                head=_delivery(str(r[0]), heads[r[0]][0]) if heads.get(r[0]) else None,
            )
            for r in found
        ]


def _take(store: SqlCore, cur: Cursor, outlet: str, limit: int) -> list[Any]:
    cur.execute(store.q["take_deliveries"], {"outlet": outlet, "limit": max(0, limit)})
    return cur.fetchall()


def _delivery(outlet: str, row: Sequence[Any]) -> Delivery:
    event = Event(
        id=int(row[0]),
        ts=float(row[4]),
        job_id=row[5],
        attempt_id=row[6],
        agent_id=row[7],
        kind=row[8],
        from_state=row[9],
        to_state=row[10],
        detail=row[11],
    )
    return Delivery(
        outlet=outlet,
        event=event,
        attempts=int(row[1]),
        next_try=float(row[2]),
        error=str(row[3]),
    )
