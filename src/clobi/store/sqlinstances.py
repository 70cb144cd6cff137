"""The resource manager's part of the SQL store: instances, demand, agent loads, decision
events and a little kept state. (Abandoning an agent is `SqlWork`'s: it is about leases.)"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from clobi.model.instances import (
    LIVE_STATES,
    AgentLoad,
    InstanceRecord,
    InstanceState,
    QueuedClass,
)
from clobi.store.sqlcore import SqlCore


class SqlInstances(SqlCore):
    """Instances and what the manager observes."""

    def create_instance(
        self, pool: str, provider: str, cost_per_hour: float, reason: str
    ) -> InstanceRecord:
        with self._tx() as cur:
            now = self._now()
            params = {"pool": pool, "provider": provider, "cost_per_hour": cost_per_hour}
            instance_id = self._insert(
                cur, self.q["insert_instance"], {**params, "now": now, "reason": reason}
            )
            detail = f"instance {instance_id} of pool {pool} requested: {reason}"
            self._event(cur, now, "instance_requested", detail=detail)
        return InstanceRecord(
            instance_id, pool, provider, "", InstanceState.REQUESTED, cost_per_hour, now,
            None, None, None, None, reason,
        )  # fmt: skip

    def set_instance(
        self,
        instance_id: int,
        state: InstanceState,
        reason: str,
        *,
        provider_id: str | None = None,
        expect: Sequence[InstanceState] = (),
    ) -> bool:
        allowed = ",".join(f"'{InstanceState(s).value}'" for s in (expect or LIVE_STATES))
        with self._tx() as cur:
            now = self._now()
            params = {
                "instance_id": instance_id,
                "state": state.value,
                "reason": reason,
                "provider_id": provider_id,
                "now": now,
            }
            cur.execute(self.q["set_instance"].format(expect=allowed), params)
            done = cur.rowcount == 1
            if done:
                detail = f"instance {instance_id} {state.value}: {reason}"
                self._event(cur, now, f"instance_{state.value}", detail=detail)
            return done

    def list_instances(
        self, pool: str | None = None, include_ended: bool = False
    ) -> list[InstanceRecord]:
        clauses, params = [], {}
        if pool is not None:
            clauses.append("pool = :pool")
            params["pool"] = pool
        if not include_ended:
            clauses.append("state NOT IN ('terminated', 'failed')")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._tx(write=False) as cur:
            cur.execute(self.q["select_instances"].format(where=where), params)
            return [_instance(r) for r in cur.fetchall()]

    def queued_demand(self) -> list[QueuedClass]:
        with self._tx(write=False) as cur:
            cur.execute(self.q["queued_demand"], {"now": self._now()})
            rows = cur.fetchall()
        return [
            QueuedClass(float(r[0]), int(r[1]), int(r[2]), _labels(r[3]), int(r[4]), int(r[5]))
            for r in rows
        ]

    def agent_loads(self) -> list[AgentLoad]:
        with self._tx(write=False) as cur:
            cur.execute(self.q["agent_load"])
            rows = cur.fetchall()
        return [AgentLoad(int(r[0]), float(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows]

    def record_event(self, kind: str, detail: str, agent_id: int | None = None) -> None:
        with self._tx() as cur:
            self._event(cur, self._now(), kind, agent_id=agent_id, detail=detail)

    def get_meta(self, key: str) -> str | None:
        with self._tx(write=False) as cur:
            cur.execute(self.q["get_meta"], {"key": key})
            row = cur.fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as cur:
            cur.execute(self.q["set_meta"], {"key": key, "value": value, "now": self._now()})


def _labels(requires: str | None) -> frozenset[str]:
    return frozenset(requires.split()) if requires else frozenset()


def _instance(r: Sequence[Any]) -> InstanceRecord:
    return InstanceRecord(
        id=int(r[0]),
        pool=r[1],
        provider=r[2],
        provider_id=r[3],
        state=InstanceState(r[4]),
        cost_per_hour=float(r[5]),
        created_at=r[6],
        launched_at=r[7],
        ready_at=r[8],
        ended_at=r[9],
        agent_id=r[10],
        reason=r[11],
    )
