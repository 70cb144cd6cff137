"""Agents' hot path in the SQL store: claiming jobs and reporting how they ended, a few
statements per call whatever the batch (engines may replace the batch steps: `_may_claim`,
`_start_attempts`, `_insert_events`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from clobi.model.records import Capacity, Claim, Outcome
from clobi.model.states import AttemptState, JobState, job_state_for
from clobi.store.base import ClaimRequest
from clobi.store.sqlcore import Cursor, SqlCore, event_row

# How many queued jobs one claim looks at to fill the capacity it was given.
_SCAN_FACTOR = 4


class SqlClaims(SqlCore):
    """Claims and reports of agents."""

    def claim(self, request: ClaimRequest) -> list[Claim]:
        if request.limit <= 0 or not self._may_claim(request):
            return []
        with self._tx(durable=False) as cur:
            events: list[dict[str, Any]] = []
            claims = self._claim(cur, request, self._now(), events)
            self._insert_events(cur, events)
            return claims

    def finish(
        self, agent_id: int, outcomes: Sequence[Outcome], then: ClaimRequest | None = None
    ) -> tuple[list[int], list[Claim]]:
        with self._tx() as cur:
            now = self._now()
            events: list[dict[str, Any]] = []
            refused = self._finish(cur, agent_id, outcomes, now, events) if outcomes else []
            if outcomes:  # their live log tails are done with: the final logs are outputs
                ids = ",".join(str(int(o.attempt_id)) for o in outcomes)
                cur.execute(self.q["delete_log_tails_of_attempts"].format(ids=ids))
            claims = []
            if then is not None and then.limit > 0:
                claims = self._claim(cur, then, now, events)
            self._insert_events(cur, events)
            return refused, claims

    # --- internals ----------------------------------------------------------------------
    def _may_claim(self, request: ClaimRequest) -> bool:
        """Whether `request` would get a job now, read without taking the write lock.

        One submit wakes every idle agent, and all but one find nothing: their claims must
        not queue for the write lock (SQLite serialises writers, and a writer kept waiting
        sleeps in its busy handler) ahead of the claim that wins. A job taken between this
        read and the claim only costs that claim an empty write transaction."""
        with self._tx(write=False) as cur:
            return bool(self._candidates(cur, request, self._now(), limit=1))

    def _candidates(
        self, cur: Cursor, req: ClaimRequest, now: float, limit: int
    ) -> list[tuple[int, int, int | None]]:
        """Up to `limit` queued jobs that together fit the request: (job, spec, index)."""
        cap = req.capacity
        one = req.per_job or cap
        cur.execute(
            self.q["claim_candidates"],
            {
                "now": now,
                "cpus": min(one.cpus, cap.cpus),
                "memory": min(one.memory_bytes, cap.memory_bytes),
                "gpus": min(one.gpus, cap.gpus),
                "scan": max(16, req.limit * _SCAN_FACTOR),
            },
        )
        return _pack(cur.fetchall(), cap, limit)

    def _claim(
        self, cur: Cursor, req: ClaimRequest, now: float, events: list[dict[str, Any]]
    ) -> list[Claim]:
        picked = self._candidates(cur, req, now, req.limit)
        if not picked:
            return []
        lease_until = now + req.lease_s
        attempt_ids = self._start_attempts(
            cur,
            [job_id for job_id, _, _ in picked],
            {
                "agent_id": req.agent_id,
                "now": now,
                "lease_until": lease_until,
                "workdir": req.workdir_root,
            },
        )
        claims: list[Claim] = []
        for (job_id, spec_id, index), attempt_id in zip(picked, attempt_ids, strict=True):
            events.append(
                event_row(now, "started", job_id, attempt_id, req.agent_id, "queued", "running")
            )
            spec, sha = self._spec(cur, spec_id)
            claims.append(Claim(attempt_id, job_id, spec, index, sha, lease_until))
        return claims

    def _start_attempts(
        self, cur: Cursor, job_ids: Sequence[int], params: dict[str, Any]
    ) -> list[int]:
        """Insert a running attempt for each queued job and mark the job running with it;
        the attempts' ids, in order. Raises if a job was not queued any more (cannot happen
        with the jobs locked; refused loudly if it does). Here one INSERT each (SQLite runs
        them in process; it may lack RETURNING) and one executemany."""
        ids = [
            self._insert(cur, self.q["insert_attempt"], {**params, "job_id": job_id})
            for job_id in job_ids
        ]
        now = params["now"]
        rows = zip(job_ids, ids, strict=True)
        marks = [{"job_id": job, "attempt_id": attempt, "now": now} for job, attempt in rows]
        cur.executemany(self.q["mark_running"], marks)
        if cur.rowcount != len(job_ids):  # summed over the batch
            raise RuntimeError(f"jobs {list(job_ids)}: some claimed twice")
        return ids

    def _finish(
        self,
        cur: Cursor,
        agent_id: int,
        outcomes: Sequence[Outcome],
        now: float,
        events: list[dict[str, Any]],
    ) -> list[int]:
        """Record the outcomes that are current, a few statements for the whole batch;
        returns the attempt ids of those refused (stale, another agent's, or repeated)."""
        ids = ",".join(str(int(o.attempt_id)) for o in outcomes)
        cur.execute(self.q["attempts_for_finish"].format(ids=ids), {"agent_id": agent_id})
        rows = {r[0]: r[1:] for r in cur.fetchall()}
        updates: dict[str, list[dict[str, Any]]] = {
            "end_attempt": [],
            "end_job": [],
            "requeue_job_retry": [],
        }
        refused: list[int] = []
        for o in outcomes:
            row = rows.pop(o.attempt_id, None)  # popped: a repeated report is refused
            if row is None or row[1] != "running" or row[2] != "running" or row[3] != o.attempt_id:
                refused.append(o.attempt_id)
            else:
                events.append(self._finish_one(cur, agent_id, o, row, now=now, updates=updates))
        for name, params in updates.items():  # attempts first, then their jobs
            if params:
                cur.executemany(self.q[name], params)
        return refused

    def _finish_one(
        self,
        cur: Cursor,
        agent_id: int,
        o: Outcome,
        row: Sequence[Any],
        *,
        now: float,
        updates: dict[str, list[dict[str, Any]]],
    ) -> dict[str, Any]:
        """Queue the updates of one current report; returns its event."""
        job_id, _, _, _, retries_left, attempts, cancel_requested, spec_id = row
        updates["end_attempt"].append(
            {
                "state": o.state.value,
                "now": now,
                "exit_code": o.exit_code,
                "reason": o.reason,
                "output_key": o.output_key,
                "output_inline": o.output_inline,
                "output_size": o.output_size,
                "output_sha256": o.output_sha256,
                "attempt_id": o.attempt_id,
            }
        )
        params = {
            "job_id": job_id,
            "attempt_id": o.attempt_id,
            "now": now,
            "exit_code": o.exit_code,
            "reason": o.reason,
        }
        retry = (
            o.state is AttemptState.FAILED
            and not o.user_error
            and retries_left > 0
            and not cancel_requested
        )
        if retry:
            spec, _ = self._spec(cur, spec_id)
            delay = spec.retries.delay_s(spec.retries.count - retries_left + 1)
            updates["requeue_job_retry"].append({**params, "not_before": now + delay})
            to = JobState.QUEUED
        else:
            to = JobState.CANCELLED if cancel_requested else job_state_for(o.state)
            updates["end_job"].append({**params, "state": to.value})
        kind = "retry" if retry else str(to)
        return event_row(
            now, kind, job_id, o.attempt_id, agent_id, "running", str(to), _detail(o, attempts)
        )


def _pack(rows: Sequence[Any], cap: Capacity, limit: int) -> list[tuple[int, int, int | None]]:
    """Greedy fill in queue order: take each job that still fits; skip those that do not."""
    cpus, memory, gpus = cap.cpus, cap.memory_bytes, cap.gpus
    picked: list[tuple[int, int, int | None]] = []
    for job_id, spec_id, index, j_cpus, j_mem, j_gpus, requires in rows:
        if len(picked) >= limit:
            break
        fits = j_cpus <= cpus + 1e-9 and j_mem <= memory and j_gpus <= gpus
        if fits and (not requires or set(requires.split()) <= cap.labels):
            picked.append((job_id, spec_id, index))
            cpus, memory, gpus = cpus - j_cpus, memory - j_mem, gpus - j_gpus
    return picked


def _detail(o: Outcome, attempts: int) -> str:
    parts = [f"attempt {attempts}"]
    if o.exit_code is not None:
        parts.append(f"exit {o.exit_code}")
    if o.reason:
        parts.append(o.reason)
    return "; ".join(parts)
