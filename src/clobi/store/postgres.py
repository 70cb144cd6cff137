"""The PostgreSQL engine: one database shared by several servers and sweepers.

The behaviour is the shared SQL store's (`SqlJobs`, `SqlWork`, `SqlTokens`, `SqlLogs` over the named
queries); this module supplies connections and transactions, and what concurrent writers need
where SQLite simply serialises them:

- claims lock their candidates `FOR UPDATE SKIP LOCKED`, so claimers never wait for each other
  and never get the same job (`sql/postgres/queries.sql` holds the queries that differ);
- time is the database's clock, read once per transaction, so leases mean the same on every host;
- submits, retries and sweeps that requeue `NOTIFY clobi_work` in their transaction; `listen()`
  is a connection doing `LISTEN clobi_work`;
- the sweeper is elected with an advisory lock (see `try_lock`);
- the schema is migrated under an advisory lock, so concurrent starters do not race.

Threads share a store (a server runs its blocking calls in a threadpool): each transaction takes
a connection of its own from a small pool (`POOL_SIZE`; more are opened only while that many
transactions run at once), so one thread's commit never waits behind another's, and PostgreSQL
flushes their commits together.

Commits are durable: `synchronous_commit` is raised to `on` if the server has it `off`. A
transaction that only claims sets it `off` for itself (`SET LOCAL`), as the SQLite engine
commits such a transaction with `synchronous=NORMAL`: a crash of the database may lose its
commit, which only returns its jobs to the queue (at least once, as after a crashed agent),
and the next durable commit flushes the WAL before it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from enum import Enum
from typing import Any

import psycopg
import psycopg.errors

from clobi.errors import Conflict, StoreUnavailable
from clobi.model.records import Claim, Submission, SweepResult
from clobi.store import queries
from clobi.store.base import ClaimRequest, Store, Wakeup
from clobi.store.pgconn import (
    DIALECT,
    Conn,
    alive,
    connect,
    pyformat,
    reason,
    redact,
)
from clobi.store.pgconn import PgCursor as _Cursor
from clobi.store.pgconn import Pool as _Pool
from clobi.store.pgconn import rollback as _rollback
from clobi.store.sqlcore import Cursor
from clobi.store.sqlinstances import SqlInstances
from clobi.store.sqljobs import SqlJobs
from clobi.store.sqllogs import SqlLogs
from clobi.store.sqloutbox import SqlOutbox
from clobi.store.sqlseries import SqlSeries
from clobi.store.sqltokens import SqlTokens
from clobi.store.sqlwork import SqlWork

CHANNEL = "clobi_work"
# Connections one store opens at most for transactions running at the same time (threads
# beyond that wait for one to be free).
POOL_SIZE = 4

# First halves of Clobi's two-part advisory lock keys, one per use, so a blocking lock of one
# use can never wait on a lock of another: "CLOB" + 1, 2, 3.
NS_MIGRATE, NS_ELECTION, NS_SUBMIT = 0x434C4F41 + 1, 0x434C4F41 + 2, 0x434C4F41 + 3


class PostgresStore(
    SqlJobs, SqlWork, SqlTokens, SqlLogs, SqlInstances, SqlOutbox, SqlSeries, Store
):
    """Store engine over one PostgreSQL database; safe to share between threads (each
    transaction runs on a pooled connection), plus one connection per listener and per lock
    it contends for."""

    LIKE_ANY_CASE = "ILIKE"  # see SqlJobs

    def __init__(self, url: str, pool_size: int = POOL_SIZE) -> None:
        super().__init__()
        self.q = queries.load(dialect=DIALECT)
        self.url = url
        self.where = redact(url)
        self._lock = threading.RLock()  # elections, listeners, closing
        self._pool = _Pool(url, self.where, pool_size)
        self._local = threading.local()  # this thread's open transaction: .cur, .conn, .now
        self._closed = False
        self._elections: dict[str, _Election] = {}
        self._listeners: set[_Listener] = set()
        first = connect(url, self.where)
        try:
            migrate(first)
        except psycopg.Error as exc:
            first.close()
            raise StoreUnavailable(f"store {self.where}: migrating: {reason(exc)}") from None
        self._pool.put(first)

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        """`postgresql://user@host:port/dbname` (or `postgres://…`, any libpq URL)."""
        return cls(url)

    # --- what SqlCore needs ---------------------------------------------------------------
    @contextlib.contextmanager
    def _tx(self, write: bool = True, durable: bool = True) -> Iterator[Cursor]:
        # MVCC readers never block writers, so reads and writes open the same transaction.
        # `durable=False`: this transaction's commit need not wait for the WAL flush.
        local = self._local
        cur: Cursor | None = getattr(local, "cur", None)
        if cur is not None:  # a method here opened it to add to it: join it
            yield cur
            return
        self._check_open()
        conn = self._pool.take()
        try:
            with conn.cursor() as raw:
                if not durable:
                    raw.execute("SET LOCAL synchronous_commit = off")
                local.conn, local.cur, local.now = conn, _Cursor(raw), None
                yield local.cur
            conn.commit()
        except psycopg.OperationalError as exc:
            _rollback(conn)
            raise StoreUnavailable(f"store {self.where}: {reason(exc)}") from None
        except psycopg.errors.UniqueViolation as exc:
            _rollback(conn)  # two writers raced for one key: the later one is refused
            raise Conflict(f"already exists: {reason(exc)}") from None
        except BaseException:
            _rollback(conn)
            raise
        finally:
            local.conn, local.cur, local.now = None, None, None
            self._pool.give_back(conn)

    @property
    def _conn(self) -> Conn:
        """The idle connection the next transaction gets (for tests that reach into it)."""
        return self._pool.next_idle()

    def _insert(self, cur: Cursor, query: str, params: dict[str, Any]) -> int:
        cur.execute(query, params)  # the postgres insert queries end in RETURNING id
        return int(cur.fetchone()[0])

    # SqlCore's clock is static (the local time); this one needs the connection.
    def _now(self) -> float:  # type: ignore[override]
        """The database's clock, read once per transaction: leases computed by servers on
        different hosts agree."""
        with self._tx(write=False):
            local = self._local
            if local.now is None:
                # Its own cursor: the transaction's cursor may hold rows not fetched yet.
                local.now = float(_value(local.conn.execute(self.q["db_now"])))
            now: float = local.now
            return now

    # --- changes that also lock rows in a fixed order or wake agents ---------------------
    def submit(self, submission: Submission) -> list[int]:
        """Create the jobs and notify listeners, in one transaction."""
        with self._tx() as cur:
            if submission.idempotency_key is not None:
                key = {"namespace": NS_SUBMIT, "key": submission.idempotency_key}
                cur.execute(self.q["lock_idempotency_key"], key)
            ids = super().submit(submission)
            cur.execute(self.q["notify_work"])
            return ids

    def retry(self, job_ids: Sequence[int]) -> list[int]:
        """Requeue finished jobs and notify listeners, in one transaction."""
        with self._tx() as cur:
            self._lock_jobs(cur, job_ids)
            ids = super().retry(job_ids)
            if ids:
                cur.execute(self.q["notify_work"])
            return ids

    def kill(self, job_ids: Sequence[int]) -> list[int]:
        """Cancel or ask to stop jobs (locked in id order first)."""
        with self._tx() as cur:
            self._lock_jobs(cur, job_ids)
            return super().kill(job_ids)

    def remove(self, job_ids: Sequence[int]) -> list[int]:
        """Delete jobs (locked first, so none starts running while it is deleted)."""
        with self._tx() as cur:
            self._lock_jobs(cur, job_ids)
            return super().remove(job_ids)

    def _may_claim(self, request: ClaimRequest) -> bool:
        """Always: the claim itself is the read. Claimers never wait for each other here
        (SKIP LOCKED), and a claim that locked no row has no transaction id, so its commit
        writes and flushes nothing; a probe would only add a round trip to every claim."""
        return True

    def _claim(
        self, cur: Cursor, req: ClaimRequest, now: float, events: list[dict[str, Any]]
    ) -> list[Claim]:
        """Claim queued jobs, walking the queue index whatever the statistics say."""
        cur.execute(self.q["claim_plan"])  # after the report's reads, which need their sort
        return super()._claim(cur, req, now, events)

    def _start_attempts(
        self, cur: Cursor, job_ids: Sequence[int], params: dict[str, Any]
    ) -> list[int]:
        """One statement for all of a claim's attempts and jobs (see `start_attempts`)."""
        cur.execute(self.q["start_attempts"], {**params, "job_ids": list(job_ids)})
        ids = dict((job_id, attempt_id) for attempt_id, job_id in cur.fetchall())
        if len(ids) != len(job_ids):  # (the attempts inserted are rolled back with the rest)
            raise RuntimeError(f"jobs {list(job_ids)}: some claimed twice")
        return [ids[job_id] for job_id in job_ids]

    def _insert_events(self, cur: Cursor, events: Sequence[dict[str, Any]]) -> None:
        """One statement for a batch of events (see `insert_events`)."""
        if events:
            cur.execute(self.q["insert_events"], {k: [e[k] for e in events] for k in events[0]})

    def sweep(self, lost_cap: int, agent_timeout_s: float) -> SweepResult:
        """Sweep, notifying listeners in the same transaction when jobs were requeued."""
        with self._tx() as cur:
            result = super().sweep(lost_cap, agent_timeout_s)
            if result.requeued_jobs:
                cur.execute(self.q["notify_work"])
            return result

    def _lock_jobs(self, cur: Cursor, job_ids: Sequence[int]) -> None:
        if job_ids:
            cur.execute(self.q["lock_jobs"], {"ids": [int(i) for i in job_ids]})

    # --- sweeper election -----------------------------------------------------------------
    def try_lock(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take or renew lock `name` for `owner` for `ttl_s` seconds.

        Between stores, the lock is a session advisory lock held on a connection of its own.
        `ttl_s` maps onto that connection's `idle_session_timeout`: when its holder does not
        call again within `ttl_s`, PostgreSQL ends the session, which releases the lock, and
        the next store to ask takes it. A holder that dies releases it at once.
        Between owners of one store, which share that session, the `locks` row decides, with
        the same TTL rule as SQLite. A store that has just taken the advisory lock overwrites
        the row: whoever it names lost the lock with their session.
        """
        with self._lock:
            election = self._election(name)
            got = election.hold(ttl_s)
            if got is _Held.REFUSED:
                return False
            if got is _Held.RENEWED:
                return super().try_lock(name, owner, ttl_s)
            try:
                with self._tx() as cur:
                    until = self._now() + ttl_s
                    cur.execute(
                        self.q["force_lock"], {"name": name, "owner": owner, "until": until}
                    )
            except BaseException:
                election.close()  # not recorded as ours: let go, so the next call starts over
                raise
            return True

    def _election(self, name: str) -> _Election:
        election = self._elections.get(name)
        if election is None:
            self._check_open()
            election = self._elections[name] = _Election(self.url, self.where, name, self.q)
        return election

    # --- wake-ups and connections -----------------------------------------------------------
    def listen(self, name: str) -> Wakeup | None:
        """A handle readable when work may have appeared, on its own `LISTEN` connection."""
        self._check_open()
        listener = _Listener(self.url, self.where, name, self._listeners.discard)
        self._listeners.add(listener)
        return listener

    def close(self) -> None:
        """Close the store's connections (those in a transaction when it ends), its lock
        sessions (releasing their locks) and its listeners."""
        with self._lock:
            self._closed = True
            for listener in list(self._listeners):
                listener.close()
            for election in self._elections.values():
                election.close()
            self._elections.clear()
            self._pool.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable(f"store {self.where}: closed")


class _Held(Enum):
    TAKEN = "taken"  # this call took the advisory lock
    RENEWED = "renewed"  # this store already held it
    REFUSED = "refused"  # another store holds it


class _Election:
    """One lock name's advisory lock, on a connection of its own: PostgreSQL releases it when
    the connection ends, and ends the connection after `idle_session_timeout`."""

    def __init__(self, url: str, where: str, name: str, q: dict[str, str]) -> None:
        self.url, self.where, self.name, self.q = url, where, name, q
        self.conn: Conn | None = None
        self.held = False

    def hold(self, ttl_s: float) -> _Held:
        """Take or renew the advisory lock, arming the session's idle timeout with `ttl_s`."""
        timeout = str(max(1, min(round(ttl_s * 1000), 2**31 - 1)))  # ms; "0" would disable it
        if self.conn is not None and not alive(self.conn):
            self.close()  # the server ended the idle session, and the lock went with it
        try:
            return self._hold(timeout)
        except psycopg.OperationalError as exc:
            self.close()
            raise StoreUnavailable(f"store {self.where}: lock {self.name}: {reason(exc)}") from None

    def _hold(self, timeout: str) -> _Held:
        if self.conn is None:
            self.conn = connect(self.url, self.where, autocommit=True)
        if self.held:
            self.conn.execute(pyformat(self.q["renew_advisory_lock"]), {"timeout": timeout})
            return _Held.RENEWED
        params = {"namespace": NS_ELECTION, "name": self.name, "timeout": timeout}
        self.held = bool(_value(self.conn.execute(pyformat(self.q["take_advisory_lock"]), params)))
        return _Held.TAKEN if self.held else _Held.REFUSED

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn, self.held = None, False


class _Listener:
    """A wake-up handle: a connection doing `LISTEN clobi_work`, readable on a notification.

    If the connection is lost it wakes its owner (a notification may have been missed) and
    listens again on a new one; while the server is unreachable, `fileno()` is a pipe that
    never becomes readable, so the owner falls back on its own timers instead of spinning.
    """

    def __init__(
        self, url: str, where: str, name: str, forget: Callable[[_Listener], None]
    ) -> None:
        self.url, self.where, self.name, self._forget = url, where, name, forget
        self._idle: tuple[int, int] | None = None
        self._conn: Conn | None = self._open()

    def fileno(self) -> int:
        if self._conn is None or self._conn.closed:
            if self._idle is None:
                self._idle = os.pipe()
            return self._idle[0]
        return self._conn.fileno()

    def rang(self) -> bool:
        """Consume pending notifications; True if there were any (or the connection was
        lost and may have missed some)."""
        if self._conn is not None and alive(self._conn):  # alive() reads what is pending
            rang = False
            while self._conn.pgconn.notifies() is not None:
                rang = True
            return rang
        lost = self._conn is not None
        if self._conn is not None:
            self._conn.close()
        self._conn = self._open_or_none()
        return lost or self._conn is not None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._idle is not None:
            for fd in self._idle:
                os.close(fd)
            self._idle = None
        self._forget(self)

    def _open(self) -> Conn:
        conn = connect(self.url, self.where, autocommit=True)
        conn.execute(f"LISTEN {CHANNEL}")
        return conn

    def _open_or_none(self) -> Conn | None:
        try:
            return self._open()
        except StoreUnavailable:
            return None


# --- migrations ---------------------------------------------------------------------------------
def migrate(conn: Conn) -> int:
    """Bring the schema to the newest migration; returns the version. Concurrent starters
    queue on an advisory lock and find the work done."""
    pending = queries.migrations(DIALECT)
    version = _schema_version(conn)
    if version < pending[-1][0]:
        try:
            conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (NS_MIGRATE,))
            conn.execute(queries.load(dialect=DIALECT)["create_version_table"])
            version = _schema_version(conn)  # another starter may have migrated meanwhile
            for v, sql in pending:
                if v > version:
                    conn.execute(sql)  # no parameters: several statements in one go
                    conn.execute("INSERT INTO clobi_schema_version (version) VALUES (%s)", (v,))
                    version = v
        except BaseException:
            _rollback(conn)
            raise
    conn.commit()
    return version


def _schema_version(conn: Conn) -> int:
    if not _value(conn.execute("SELECT to_regclass('clobi_schema_version') IS NOT NULL")):
        return 0
    return int(_value(conn.execute("SELECT coalesce(max(version), 0) FROM clobi_schema_version")))


def _value(cur: psycopg.Cursor[Any]) -> Any:
    """The first column of the one row a statement returns."""
    row = cur.fetchone()
    if row is None:
        raise StoreUnavailable("the database returned no row where one was due")
    return row[0]
