"""Submitting, reading and user actions of the SQL store."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from clobi.errors import Conflict, NotFound
from clobi.model.records import AttemptRecord, Event, JobFilter, JobRecord, OutputRef, Submission
from clobi.model.spec import JobSpec
from clobi.model.states import REMOVABLE, JobState
from clobi.store.sqlcore import SqlCore, attempt_from_row, event_from_row, job_from_row

# The columns of the keyed sorts (the others, `id` and `created`, are the id order).
SORT_COLUMNS = {"priority": "j.priority", "state": "j.state", "updated": "j.updated_at"}
# LIMIT for "no limit" with an OFFSET, in a form both engines take.
ALL_ROWS = 2**63 - 1


class SqlJobs(SqlCore):
    """Jobs as users see them."""

    # The operator matching a job's name against a pattern regardless of case: SQLite's LIKE
    # ignores the case of ASCII letters; PostgreSQL overrides this with ILIKE (whose matches
    # its planner can estimate, where it cannot for `lower(name) LIKE …`).
    LIKE_ANY_CASE = "LIKE"

    def submit(self, submission: Submission) -> list[int]:
        spec = submission.spec
        with self._tx() as cur:
            if submission.idempotency_key is not None:
                cur.execute(self.q["spec_by_key"], {"key": submission.idempotency_key})
                row = cur.fetchone()
                if row is not None:
                    cur.execute(self.q["job_ids_of_spec"], {"spec_id": row[0]})
                    return [r[0] for r in cur.fetchall()]
            now = self._now()
            spec_id = self._insert(
                cur,
                self.q["insert_spec"],
                {
                    "spec_json": spec.to_json(),
                    "input_sha256": submission.input_sha256,
                    "owner": submission.owner,
                    "idempotency_key": submission.idempotency_key,
                    "job_count": spec.job_count,
                    "now": now,
                },
            )
            cur.executemany(
                self.q["insert_tag"], [{"tag": t, "spec_id": spec_id} for t in spec.tags]
            )
            cur.executemany(self.q["insert_job"], _job_rows(spec, spec_id, submission.owner, now))
            cur.execute(self.q["job_ids_of_spec"], {"spec_id": spec_id})
            ids = [r[0] for r in cur.fetchall()]
            cur.executemany(
                self.q["insert_event"],
                [
                    {
                        "now": now,
                        "job_id": i,
                        "attempt_id": None,
                        "agent_id": None,
                        "kind": "submitted",
                        "from_state": "",
                        "to_state": "queued",
                        "detail": "",
                    }
                    for i in ids
                ],
            )
            return ids

    def get_job(self, job_id: int) -> JobRecord:
        jobs = self.list_jobs(JobFilter(ids=(job_id,), limit=1))
        if not jobs:
            raise NotFound(f"job {job_id}: no such job")
        return jobs[0]

    def job_spec(self, job_id: int) -> tuple[JobSpec, str | None]:
        with self._tx(write=False) as cur:
            cur.execute(self.q["spec_of_job"], {"job_id": job_id})
            row = cur.fetchone()
            if row is None:
                raise NotFound(f"job {job_id}: no such job")
            return self._spec(cur, row[0])

    def list_jobs(self, flt: JobFilter) -> list[JobRecord]:
        where, params = _filter_sql(flt, self.LIKE_ANY_CASE)
        sql = self.q["select_jobs"] + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += f" ORDER BY {_order_sql(flt)}"
        if flt.limit is not None or flt.offset:
            sql += f" LIMIT {ALL_ROWS if flt.limit is None else int(flt.limit)}"
        if flt.offset:
            sql += f" OFFSET {int(flt.offset)}"
        with self._tx(write=False) as cur:
            cur.execute(sql, params)
            rows = cur.fetchall()
            tags = self._tags(cur, {r[1] for r in rows})
        return [job_from_row(r, tags.get(r[1], ())) for r in rows]

    def count_states(self, job_ids: Sequence[int] | None = None) -> dict[JobState, int]:
        with self._tx(write=False) as cur:
            if job_ids is None:
                cur.execute(self.q["count_states"])
                rows = cur.fetchall()
            else:
                rows = _count_in_chunks(cur, job_ids)
        counts = dict.fromkeys(JobState, 0)
        for state, n in rows:
            counts[JobState(state)] += n
        return counts

    def attempts(self, job_id: int) -> list[AttemptRecord]:
        with self._tx(write=False) as cur:
            cur.execute(self.q["select_attempts"], {"job_id": job_id})
            return [attempt_from_row(r) for r in cur.fetchall()]

    def events(
        self, job_id: int | None = None, after_id: int = 0, limit: int = 1000
    ) -> list[Event]:
        clause = "" if job_id is None else "AND job_id = :job_id"
        sql = self.q["select_events"].format(job_clause=clause)
        with self._tx(write=False) as cur:
            cur.execute(sql, {"after_id": after_id, "limit": limit, "job_id": job_id})
            return [event_from_row(r) for r in cur.fetchall()]

    def output_ref(self, job_id: int, attempt_id: int | None = None) -> OutputRef | None:
        with self._tx(write=False) as cur:
            if attempt_id is None:
                cur.execute(self.q["latest_output"], {"job_id": job_id})
            else:
                cur.execute(
                    self.q["output_of_attempt"], {"job_id": job_id, "attempt_id": attempt_id}
                )
            row = cur.fetchone()
        if row is None or (row[2] is None and row[3] is None):
            return None
        inline = bytes(row[3]) if row[3] is not None else None
        return OutputRef(
            attempt_id=row[0], job_id=row[1], key=row[2], inline=inline, size=row[4], sha256=row[5]
        )

    def kill(self, job_ids: Sequence[int]) -> list[int]:
        done: list[int] = []
        with self._tx() as cur:
            now = self._now()
            for job_id in job_ids:
                cur.execute(self.q["cancel_queued"], {"job_id": job_id, "now": now})
                if cur.rowcount == 1:
                    self._event(
                        cur,
                        now,
                        "cancelled",
                        job_id,
                        from_state="queued",
                        to_state="cancelled",
                        detail="killed by user",
                    )
                    done.append(job_id)
                    continue
                cur.execute(self.q["request_cancel"], {"job_id": job_id, "now": now})
                if cur.rowcount == 1:
                    self._event(cur, now, "kill_requested", job_id, detail="killed by user")
                    done.append(job_id)
        return done

    def remove(self, job_ids: Sequence[int]) -> list[int]:
        removed: list[int] = []
        with self._tx() as cur:
            now = self._now()
            for job_id in job_ids:
                job = _state_of(cur, job_id)
                if job is None:
                    continue
                if job not in REMOVABLE:
                    raise Conflict(f"job {job_id}: is {job}; kill it before removing it")
                cur.execute(self.q["delete_job"], {"job_id": job_id})
                cur.execute(self.q["delete_log_tails_of_job"], {"job_id": job_id})
                cur.execute(self.q["delete_attempts_of_job"], {"job_id": job_id})
                self._event(cur, now, "removed", job_id, from_state=job, detail="removed by user")
                removed.append(job_id)
        return removed

    def retry(self, job_ids: Sequence[int]) -> list[int]:
        requeued: list[int] = []
        with self._tx() as cur:
            now = self._now()
            for job_id in job_ids:
                cur.execute(self.q["spec_of_job"], {"job_id": job_id})
                row = cur.fetchone()
                if row is None:
                    continue
                spec, _ = self._spec(cur, row[0])
                old = _state_of(cur, job_id)
                cur.execute(
                    self.q["retry_job"],
                    {"job_id": job_id, "now": now, "retries_left": spec.retries.count},
                )
                if cur.rowcount == 1:
                    self._event(
                        cur,
                        now,
                        "retried",
                        job_id,
                        from_state=str(old),
                        to_state="queued",
                        detail="retried by user",
                    )
                    requeued.append(job_id)
        return requeued


def _job_rows(spec: JobSpec, spec_id: int, owner: str, now: float) -> Iterator[dict[str, Any]]:
    res = spec.resources
    base = {
        "spec_id": spec_id,
        "name": spec.name,
        "owner": owner,
        "priority": spec.priority,
        "cpus": res.cpus,
        "memory_bytes": res.memory_bytes,
        "gpus": res.gpus,
        "requires": " ".join(sorted(spec.requires)) or None,
        "now": now,
        "retries_left": spec.retries.count,
    }
    if spec.array is None:
        yield {**base, "array_index": None}
        return
    for index in range(spec.array.size):
        yield {**base, "array_index": index}


def _filter_sql(flt: JobFilter, like: str = "LIKE") -> tuple[list[str], dict[str, Any]]:
    where: list[str] = []
    params: dict[str, Any] = {}
    cursor = _cursor_sql(flt)
    if cursor is not None:
        where.append(cursor)
        params.update(after_id=flt.after_id, after_value=flt.after_value)
    if flt.text:
        where.append(f"j.name {like} :text ESCAPE '\\'")
        params["text"] = f"%{like_escaped(flt.text)}%"
    if flt.states:
        where.append(
            "j.state IN ({})".format(",".join(f"'{JobState(s).value}'" for s in flt.states))
        )
    if flt.ids:
        where.append("j.id IN ({})".format(",".join(str(int(i)) for i in flt.ids)))
    if flt.owner is not None:
        where.append("j.owner = :owner")
        params["owner"] = flt.owner
    for n, tag in enumerate(sorted(flt.tags)):
        where.append(f"j.spec_id IN (SELECT spec_id FROM spec_tags WHERE tag = :tag{n})")
        params[f"tag{n}"] = tag
    return where, params


def _cursor_sql(flt: JobFilter) -> str | None:
    """Where the page starts: after the cursor's (sort value, id), in the page's direction."""
    op = "<" if flt.descending else ">"
    column = SORT_COLUMNS.get(flt.sort)
    if column is None:
        return None if flt.after_id <= 0 else f"j.id {op} :after_id"
    if flt.after_value is None:
        return None
    return f"({column}, j.id) {op} (:after_value, :after_id)"


def _order_sql(flt: JobFilter) -> str:
    way = " DESC" if flt.descending else ""
    column = SORT_COLUMNS.get(flt.sort)
    return f"j.id{way}" if column is None else f"{column}{way}, j.id{way}"


def like_escaped(text: str) -> str:
    """`text` for a LIKE pattern with `ESCAPE '\\'`: its `%`, `_` and `\\` match themselves."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _count_in_chunks(cur: Any, job_ids: Sequence[int]) -> list[tuple[str, int]]:
    # Arrays have consecutive ids: count whole runs with BETWEEN instead of long IN lists.
    rows: list[tuple[str, int]] = []
    for first, last in _runs(sorted(set(job_ids))):
        cur.execute(
            "SELECT state, count(*) FROM jobs WHERE id BETWEEN :a AND :b GROUP BY state",
            {"a": first, "b": last},
        )
        rows.extend(cur.fetchall())
    return rows


def _runs(ids: Sequence[int]) -> Iterator[tuple[int, int]]:
    """Consecutive runs of sorted ids as (first, last) pairs."""
    if not ids:
        return
    first = prev = ids[0]
    for i in ids[1:]:
        if i != prev + 1:
            yield first, prev
            first = i
        prev = i
    yield first, prev


def _state_of(cur: Any, job_id: int) -> JobState | None:
    cur.execute("SELECT state FROM jobs WHERE id = :job_id", {"job_id": job_id})
    row = cur.fetchone()
    return None if row is None else JobState(row[0])
