"""Agents' side of the SQL store: registering, heartbeats and leases, draining, and the
sweeper's election and sweep, over their claims and reports (`sqlclaims`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from clobi.model.records import AgentInfo, AgentRecord, HeartbeatReply, SweepResult
from clobi.model.states import JobState
from clobi.store.sqlclaims import SqlClaims
from clobi.store.sqlcore import Cursor, labels_text


class SqlWork(SqlClaims):
    """What agents and the sweeper do to the store (claims and reports: `SqlClaims`)."""

    def register_agent(self, info: AgentInfo) -> int:
        with self._tx() as cur:
            now = self._now()
            agent_id = self._insert(
                cur,
                self.q["insert_agent"],
                {
                    "name": info.name,
                    "host": info.host,
                    "pool": info.pool,
                    "cpus": info.cpus,
                    "memory_bytes": info.memory_bytes,
                    "gpus": info.gpus,
                    "labels": labels_text(info.labels),
                    "pid": info.pid,
                    "now": now,
                    "instance_id": info.instance_id,
                },
            )
            if info.instance_id is not None:
                cur.execute(
                    self.q["link_instance"],
                    {"agent_id": agent_id, "instance_id": info.instance_id, "now": now},
                )
            self._event(cur, now, "agent_up", agent_id=agent_id, detail=info.name)
            return agent_id

    def heartbeat(
        self, agent_id: int, attempt_ids: Sequence[int], lease_s: float
    ) -> HeartbeatReply:
        with self._tx() as cur:
            now = self._now()
            until = now + lease_s
            busy = int(bool(attempt_ids))
            cur.execute(self.q["touch_agent"], {"agent_id": agent_id, "now": now, "busy": busy})
            if attempt_ids:
                ids = ",".join(str(int(i)) for i in attempt_ids)
                cur.execute(
                    self.q["renew_leases"].format(ids=ids),
                    {"agent_id": agent_id, "lease_until": until, "now": now},
                )
            cur.execute(self.q["running_of_agent"], {"agent_id": agent_id, "now": now})
            running = cur.fetchall()
            cur.execute(self.q["agent_flags"], {"agent_id": agent_id})
            flags = cur.fetchone()
        mine = set(attempt_ids)
        return HeartbeatReply(
            renewed=frozenset(r[0] for r in running if r[0] in mine),
            cancel=frozenset(r[0] for r in running if r[1]),
            drain=flags is None or flags[0] == "gone" or bool(flags[1]),
            lease_until=until,
        )

    def set_drain(self, agent_id: int, drain: bool = True) -> None:
        with self._tx() as cur:
            cur.execute(self.q["set_drain"], {"agent_id": agent_id, "drain": int(drain)})
            self._event(
                cur, self._now(), "agent_drain" if drain else "agent_undrain", agent_id=agent_id
            )

    def agent_exited(self, agent_id: int) -> None:
        with self._tx() as cur:
            now = self._now()
            cur.execute(self.q["agent_gone"], {"agent_id": agent_id, "now": now})
            self._event(cur, now, "agent_exit", agent_id=agent_id)

    def list_agents(self, include_gone: bool = False) -> list[AgentRecord]:
        where = "" if include_gone else "WHERE g.state != 'gone'"
        with self._tx(write=False) as cur:
            cur.execute(self.q["select_agents"].format(where=where))
            rows = cur.fetchall()
        return [_agent_from_row(r) for r in rows]

    def try_lock(self, name: str, owner: str, ttl_s: float) -> bool:
        with self._tx() as cur:
            now = self._now()
            cur.execute(
                self.q["take_lock"],
                {"name": name, "owner": owner, "until": now + ttl_s, "now": now},
            )
            cur.execute(self.q["lock_owner"], {"name": name})
            row = cur.fetchone()
            return row is not None and row[0] == owner

    def sweep(self, lost_cap: int, agent_timeout_s: float) -> SweepResult:
        with self._tx() as cur:
            now = self._now()
            outcome = self._lose_expired(cur, lost_cap, now)
            cur.execute(self.q["silent_agents"], {"deadline": now - agent_timeout_s})
            silent = [r[0] for r in cur.fetchall()]
            for agent_id in silent:
                cur.execute(self.q["agent_gone"], {"agent_id": agent_id, "now": now})
                self._event(cur, now, "agent_lost", agent_id=agent_id, detail="no heartbeat")
        return SweepResult(
            lost_attempts=tuple(outcome["lost"]),
            requeued_jobs=tuple(outcome["queued"]),
            failed_jobs=tuple(outcome["failed"]),
            cancelled_jobs=tuple(outcome["cancelled"]),
            lost_agents=tuple(silent),
        )

    def abandon_agent(self, agent_id: int, reason: str, lost_cap: int) -> SweepResult:
        with self._tx() as cur:
            now = self._now()
            cur.execute(self.q["expire_leases_of_agent"], {"agent_id": agent_id})
            cur.execute(self.q["agent_gone_now"], {"agent_id": agent_id})
            if cur.rowcount == 1:
                self._event(cur, now, "agent_lost", agent_id=agent_id, detail=reason)
            outcome = self._lose_expired(cur, lost_cap, now)
        return SweepResult(
            lost_attempts=tuple(outcome["lost"]),
            requeued_jobs=tuple(outcome["queued"]),
            failed_jobs=tuple(outcome["failed"]),
            cancelled_jobs=tuple(outcome["cancelled"]),
            lost_agents=(agent_id,),
        )

    def next_due_s(self) -> float | None:
        with self._tx(write=False) as cur:
            now = self._now()
            cur.execute(self.q["any_claimable"], {"now": now})
            if cur.fetchone() is not None:
                return 0.0
            cur.execute(self.q["next_due"], {"now": now})
            row = cur.fetchone()
        return None if row is None or row[0] is None else max(0.0, row[0] - now)

    # --- internals ----------------------------------------------------------------------
    def _lose_expired(self, cur: Cursor, lost_cap: int, now: float) -> dict[str, list[int]]:
        """Every attempt whose lease has expired: lost, its job requeued or ended."""
        cur.execute(self.q["expired_attempts"], {"now": now})
        outcome: dict[str, list[int]] = {"lost": [], "queued": [], "failed": [], "cancelled": []}
        for row in cur.fetchall():
            self._lose(cur, row, lost_cap, now, outcome)
        return outcome

    def _lose(
        self, cur: Cursor, row: Sequence[Any], cap: int, now: float, out: dict[str, list[int]]
    ) -> None:
        attempt_id, job_id, agent_id, lost_count, cancel_requested, state, current = row
        cur.execute(
            self.q["lose_attempt"],
            {"attempt_id": attempt_id, "now": now, "reason": "lease expired"},
        )
        out["lost"].append(attempt_id)
        if state != "running" or current != attempt_id:
            return
        params = {"job_id": job_id, "attempt_id": attempt_id, "now": now}
        if cancel_requested:
            to, reason, inc = JobState.CANCELLED, "killed by user (agent lost)", 0
        elif lost_count + 1 > cap:
            to, reason, inc = JobState.FAILED, "lost too often", 1
        else:
            to, reason, inc = JobState.QUEUED, "agent lost; requeued", 1
        if to is JobState.QUEUED:
            cur.execute(self.q["requeue_lost"], {**params, "reason": reason})
        else:
            cur.execute(
                self.q["end_lost"], {**params, "state": to.value, "reason": reason, "lost_inc": inc}
            )
        self._event(
            cur,
            now,
            "lost",
            job_id,
            attempt_id=attempt_id,
            agent_id=agent_id,
            from_state="running",
            to_state=str(to),
            detail=reason,
        )
        out[str(to)].append(job_id)


def _agent_from_row(r: Sequence[Any]) -> AgentRecord:
    return AgentRecord(
        id=r[0],
        name=r[1],
        host=r[2],
        pool=r[3],
        state=r[4],
        cpus=r[5],
        memory_bytes=r[6],
        gpus=r[7],
        labels=tuple(json.loads(r[8] or "[]")),
        started_at=r[9],
        last_seen=r[10],
        drain=bool(r[11]),
        running=r[12],
        pid=r[13],
        instance_id=r[14],
        idle_since=r[15],
    )
