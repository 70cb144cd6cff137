"""The SQLite engine: one WAL file, durable commits (`synchronous=FULL`), writers serialised by
`BEGIN IMMEDIATE` with a long busy timeout so contention waits instead of failing.

A transaction that only claims commits with `synchronous=NORMAL` (no fsync). In WAL mode such
a commit is atomic and consistent but may be lost in a power failure (not in a crash of the
process, whose writes the OS keeps). A lost claim only puts its jobs back in the queue as if
never claimed (an agent that ran them is refused as stale when it reports), so they run again:
at least once, which the contract already allows, as after a crashed agent. And the next FULL
commit from any connection fsyncs the WAL, making the claim's frames durable with it.
Submissions, reports and cancels stay FULL.

Submits ring a doorbell (a unix datagram socket per waiting agent next to the database) so
idle agents wake at once without polling the file.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from clobi.errors import Conflict, SessionError, StoreUnavailable
from clobi.model.records import Claim, Outcome, Submission, SweepResult
from clobi.store import queries
from clobi.store.base import ClaimRequest, Store, Wakeup
from clobi.store.bells import Bells
from clobi.store.sqlcore import Cursor
from clobi.store.sqlinstances import SqlInstances
from clobi.store.sqljobs import SqlJobs
from clobi.store.sqllogs import SqlLogs
from clobi.store.sqloutbox import SqlOutbox
from clobi.store.sqlseries import SqlSeries
from clobi.store.sqltokens import SqlTokens
from clobi.store.sqlwork import SqlWork

BUSY_TIMEOUT_S = 120.0


class SqliteStore(SqlJobs, SqlWork, SqlTokens, SqlLogs, SqlInstances, SqlOutbox, SqlSeries, Store):
    """Store engine over one SQLite database file."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._lock = threading.RLock()
        self._conn = _connect(self.path)
        self.bells = Bells(self.path.with_name(self.path.name + ".bells"))
        self.end_bells = Bells(self.path.with_name(self.path.name + ".ends"))  # for waiters
        self._watchers = itertools.count()
        migrate(self._conn)

    @classmethod
    def from_url(cls, url: str, base: Path | None = None) -> SqliteStore:
        """`sqlite:///abs/path.db` or `sqlite:relative.db` (relative to `base`)."""
        parsed = urlparse(url)
        path = Path(parsed.path) if parsed.path.startswith("/") else (base or Path()) / parsed.path
        return cls(path)

    @contextlib.contextmanager
    def _tx(self, write: bool = True, durable: bool = True) -> Iterator[Cursor]:
        with self._lock:
            cur = self._conn.cursor()
            try:
                if not durable:  # see the module's docstring; settable outside transactions only
                    cur.execute("PRAGMA synchronous=NORMAL")
                _begin(cur, write)
                yield cur
                cur.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                _rollback(self._conn)
                raise StoreUnavailable(f"store {self.path}: {exc}") from None
            except sqlite3.IntegrityError as exc:
                _rollback(self._conn)  # two writers raced for one key: the later one is refused
                raise Conflict(f"already exists: {exc}") from None
            except BaseException:
                _rollback(self._conn)
                raise
            finally:
                if not durable:
                    cur.execute("PRAGMA synchronous=FULL")
                cur.close()

    def _insert(self, cur: Cursor, query: str, params: dict[str, Any]) -> int:
        cur.execute(query, params)
        return int(cur.lastrowid)  # type: ignore[attr-defined]

    def submit(self, submission: Submission) -> list[int]:
        ids = super().submit(submission)
        self.bells.ring()
        return ids

    def retry(self, job_ids: Any) -> list[int]:
        ids = super().retry(job_ids)
        self.bells.ring()
        return ids

    def sweep(self, lost_cap: int, agent_timeout_s: float) -> SweepResult:
        result = super().sweep(lost_cap, agent_timeout_s)
        if result.requeued_jobs:
            self.bells.ring()
        if result.failed_jobs or result.cancelled_jobs:
            self.end_bells.ring()
        return result

    def finish(
        self, agent_id: int, outcomes: Sequence[Outcome], then: ClaimRequest | None = None
    ) -> tuple[list[int], list[Claim]]:
        result = super().finish(agent_id, outcomes, then)
        if outcomes:
            self.end_bells.ring()
        return result

    def kill(self, job_ids: Sequence[int]) -> list[int]:
        killed = super().kill(job_ids)
        if killed:
            self.end_bells.ring()
        return killed

    def watch_ends(self) -> Wakeup | None:
        return self.end_bells.listen(f"w{os.getpid()}-{next(self._watchers)}")

    def listen(self, name: str) -> Wakeup | None:
        return self.bells.listen(name)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _connect(path: Path) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=OFF")
        return conn
    except (sqlite3.Error, OSError) as exc:
        raise SessionError(f"store {path}: cannot open: {exc}") from None


def _begin(cur: Cursor, write: bool) -> None:
    """Open a transaction; a writer waits for the write lock in short steps.

    IMMEDIATE takes the write lock up front: a deferred read that later writes would get
    SQLITE_BUSY at once, bypassing the busy timeout. Writers hold the lock for well under a
    millisecond, but SQLite's own busy handler sleeps 1, 2, 5, 10… ms between tries: two agents
    colliding once cost the loser a millisecond or more. So the lock is asked for without the
    handler, retried after 50 µs, doubling up to 2 ms, until BUSY_TIMEOUT_S."""
    if not write:
        cur.execute("BEGIN")
        return
    cur.execute("PRAGMA busy_timeout=0")
    try:
        pause_s, deadline = _FIRST_PAUSE_S, 0.0
        while True:
            try:
                cur.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY:
                    raise
                now = time.monotonic()
                deadline = deadline or now + BUSY_TIMEOUT_S
                if now >= deadline:
                    raise
            time.sleep(pause_s)
            pause_s = min(pause_s * 2, _LONGEST_PAUSE_S)
    finally:
        cur.execute(_BUSY_TIMEOUT)


_FIRST_PAUSE_S = 50e-6
_LONGEST_PAUSE_S = 0.002
_BUSY_TIMEOUT = f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}"


def _rollback(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to the newest migration; returns the version."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    pending = [(v, sql) for v, sql in queries.migrations() if v > version]
    if not pending:
        return version
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have migrated while we waited for the lock.
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        for v, sql in pending:
            if v > version:
                _exec_script(conn, sql)
                conn.execute(f"PRAGMA user_version = {int(v)}")
                version = v
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return version


def _exec_script(conn: sqlite3.Connection, sql: str) -> None:
    statement = ""
    for part in sql.split(";"):
        statement += part + ";"
        body = "\n".join(line for line in statement.splitlines() if not line.startswith("--"))
        if sqlite3.complete_statement(body):  # not inside a trigger's BEGIN … END yet
            if body.strip(" \n;"):
                conn.execute(body)
            statement = ""
