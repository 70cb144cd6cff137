"""Connections of the PostgreSQL engine: opening one set up for Clobi, telling whether an idle
one still lives, a small pool handing one to each transaction, and the cursor that takes the
shared queries' `:name` parameters."""

from __future__ import annotations

import contextlib
import functools
import re
import select
import threading
from typing import Any

import psycopg

from clobi.errors import SessionError, StoreUnavailable
from clobi.store import queries

DIALECT = "postgres"
MIN_SERVER_VERSION = 140000  # idle_session_timeout, which times out sweeper elections

Conn = psycopg.Connection[Any]
_IDLE = psycopg.pq.TransactionStatus.IDLE


class Pool:
    """Idle connections of one store, handed to one transaction at a time. Opens another only
    while every open one is in a transaction, up to `size`; replaces connections the server
    ended while they were idle."""

    def __init__(self, url: str, where: str, size: int) -> None:
        self.url, self.where, self.size = url, where, max(1, size)
        self._idle: list[Conn] = []
        self._open = 0  # connections out in transactions plus idle ones
        self._free = threading.Condition(threading.Lock())
        self._closed = False

    def put(self, conn: Conn) -> None:
        """Add a connection opened elsewhere (the store's first)."""
        with self._free:
            self._open += 1
            self._idle.append(conn)
            self._free.notify()

    def take(self) -> Conn:
        """A live connection for one transaction (waits while `size` are in use)."""
        with self._free:
            while not self._idle and self._open >= self.size and not self._closed:
                self._free.wait()
            if self._closed:
                raise StoreUnavailable(f"store {self.where}: closed")
            conn = self._idle.pop() if self._idle else None
            if conn is None:
                self._open += 1  # reserved: opened below, outside the lock
        try:
            if conn is None:
                return connect(self.url, self.where)
            if alive(conn):  # lost while idle (server restart, network): reconnect
                return conn
            conn.close()
            return connect(self.url, self.where)
        except BaseException:
            with self._free:
                self._open -= 1
                self._free.notify()
            raise

    def next_idle(self) -> Conn:
        """The idle connection `take` returns next (opening one if none is idle)."""
        with self._free:
            if self._idle:
                return self._idle[-1]
        conn = self.take()
        self.give_back(conn)
        return conn

    def give_back(self, conn: Conn) -> None:
        """Return a connection after its transaction (closing it if the pool is closed, or it
        broke)."""
        with self._free:
            if self._closed or conn.closed or conn.info.transaction_status != _IDLE:
                self._open -= 1
                conn.close()
            else:
                self._idle.append(conn)
            self._free.notify()

    def close(self) -> None:
        """Close the idle connections; busy ones are closed when they come back."""
        with self._free:
            self._closed = True
            self._free.notify_all()
            for conn in self._idle:
                conn.close()
                self._open -= 1
            self._idle.clear()


class PgCursor:
    """A psycopg cursor that takes the shared queries' `:name` parameters."""

    def __init__(self, raw: psycopg.Cursor[Any]) -> None:
        self._raw = raw

    def execute(self, sql: str, params: Any = None, /) -> Any:
        return self._raw.execute(sql if params is None else pyformat(sql), params)

    def executemany(self, sql: str, params: Any, /) -> Any:
        return self._raw.executemany(pyformat(sql), params)

    def fetchone(self) -> Any:
        return self._raw.fetchone()

    def fetchall(self) -> list[Any]:
        return self._raw.fetchall()

    @property
    def rowcount(self) -> int:
        return self._raw.rowcount


def connect(url: str, where: str, autocommit: bool = False) -> Conn:
    """A connection set up for Clobi: READ COMMITTED, durable commits, never idled out."""
    try:
        conn = psycopg.connect(url, autocommit=autocommit, fallback_application_name="clobi")
    except psycopg.Error as exc:
        raise StoreUnavailable(f"store {where}: cannot connect: {reason(exc)}") from None
    try:
        if conn.info.server_version < MIN_SERVER_VERSION:
            raise SessionError(f"store {where}: needs PostgreSQL 14 or newer")
        conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
        conn.execute(queries.load(dialect=DIALECT)["session_setup"])
        if not autocommit:
            conn.commit()
    except psycopg.Error as exc:
        conn.close()
        raise StoreUnavailable(f"store {where}: setting up a connection: {reason(exc)}") from None
    except BaseException:
        conn.close()
        raise
    return conn


def alive(conn: Conn) -> bool:
    """False when the server ended the connection while it was idle (restart, termination,
    idle timeout). Costs one poll of the socket; reads only if something is pending."""
    if conn.closed:
        return False
    try:
        if select.select([conn.fileno()], [], [], 0)[0]:
            conn.pgconn.consume_input()
            conn.pgconn.consume_input()  # the first read may stop at the server's last words
    except (psycopg.OperationalError, OSError):
        return False
    return not conn.closed


_TOKENS = re.compile(
    r"""'(?:[^']|'')*'      # a string literal
      | "(?:[^"]|"")*"      # a quoted identifier
      | --[^\n]*            # a comment
      | /\*.*?\*/           # a block comment
      | ::                  # a cast, not a parameter
      | :([A-Za-z_]\w*)     # a parameter
      | %                   # psycopg's placeholder character
    """,
    re.VERBOSE | re.DOTALL,
)


@functools.lru_cache(maxsize=1024)
def pyformat(sql: str) -> str:
    """`:name` parameters as psycopg's `%(name)s`; casts, quoted text and comments are kept
    and `%` escaped. Translated on the final text, because the shared code composes queries
    (`.format()`, appended clauses) after loading them; the cache makes it once per text."""

    def one(match: re.Match[str]) -> str:
        if match.group(1):
            return f"%({match.group(1)})s"
        return match.group(0).replace("%", "%%")

    return _TOKENS.sub(one, sql)


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    url = re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)
    return re.sub(r"(password=)[^&\s]*", r"\1***", url)


def reason(exc: BaseException) -> str:
    """The first line of a driver error (its DETAIL and HINT lines are for logs)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def rollback(conn: Conn) -> None:
    with contextlib.suppress(psycopg.Error):
        conn.rollback()
