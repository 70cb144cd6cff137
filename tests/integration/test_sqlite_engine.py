"""What is particular to the SQLite engine: schema, migrations, durability settings."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clobi.errors import StoreUnavailable
from clobi.model.records import Outcome
from clobi.model.states import AttemptState, JobState
from clobi.store import queries
from clobi.store import sqlite as sqlite_engine
from clobi.store.base import ClaimRequest, LogTail
from clobi.store.sqlite import BUSY_TIMEOUT_S, SqliteStore, migrate
from tests.conftest import capacity, make_agent, make_submission

Connections = tuple[SqliteStore, sqlite3.Connection]


@pytest.fixture
def connections(tmp_path: Path) -> Iterator[Connections]:
    """The store, and another connection to its database (another process's, as it were)."""
    store = SqliteStore(tmp_path / "c.db")
    writer = sqlite3.connect(tmp_path / "c.db", isolation_level=None, check_same_thread=False)
    yield store, writer
    writer.close()
    store.close()


def _schema_of(conn: sqlite3.Connection) -> set[tuple[str, str, str]]:
    rows = conn.execute("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL")
    return {(t, n, " ".join(s.split())) for t, n, s in rows}


def test_migrating_from_empty_gives_exactly_the_current_schema(tmp_path: Path) -> None:
    migrated = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    version = migrate(migrated)
    reference = sqlite3.connect(tmp_path / "r.db", isolation_level=None)
    reference.executescript(queries.sql_file("schema.sql"))
    assert _schema_of(migrated) == _schema_of(reference)
    assert version == max(v for v, _ in queries.migrations())


def test_migrating_twice_changes_nothing(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    first = migrate(conn)
    before = _schema_of(conn)
    assert migrate(conn) == first
    assert _schema_of(conn) == before


def test_the_store_is_durable_wal_with_full_sync(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.db")
    try:
        conn = store._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        store.close()


def test_only_a_claim_alone_commits_without_fsync(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.db")
    ran: list[str] = []
    try:
        agent = store.register_agent(make_agent())
        store._conn.set_trace_callback(ran.append)
        store.submit(make_submission(count=2))
        submitted = len(ran)
        (c,) = store.claim(ClaimRequest(agent, capacity(), 1, 30.0))
        claimed = len(ran)
        store.finish(
            agent,
            [Outcome(c.attempt_id, AttemptState.SUCCEEDED, exit_code=0)],
            ClaimRequest(agent, capacity(), 1, 30.0),
        )
        store._conn.set_trace_callback(None)
        claim = ran[submitted:claimed]
        assert claim.index("PRAGMA synchronous=NORMAL") < claim.index("BEGIN IMMEDIATE")
        assert claim.index("COMMIT") < claim.index("PRAGMA synchronous=FULL") == len(claim) - 1
        assert not [s for s in ran[:submitted] + ran[claimed:] if "synchronous" in s]
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        store.close()


def test_a_failed_claim_leaves_the_connection_at_full_sync(
    connections: Connections, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, writer = connections
    agent = store.register_agent(make_agent())
    (job_id,) = store.submit(make_submission())
    monkeypatch.setattr(sqlite_engine, "BUSY_TIMEOUT_S", 0.05)  # fail fast, not in 120 s
    writer.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreUnavailable):
        store.claim(ClaimRequest(agent, capacity(), 1, 30.0))
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    writer.execute("ROLLBACK")
    store._spec_cache.clear()
    store._conn.execute("UPDATE specs SET spec_json = '{'")  # the claim breaks midway
    with pytest.raises(ValueError):
        store.claim(ClaimRequest(agent, capacity(), 1, 30.0))
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert store.get_job(job_id).state is JobState.QUEUED


def test_a_claim_that_finds_nothing_does_not_wait_for_the_write_lock(
    connections: Connections,
) -> None:
    store, writer = connections
    agent = store.register_agent(make_agent())
    store.submit(make_submission(cpus=8))
    store._conn.execute("PRAGMA busy_timeout = 50")  # fail fast instead of waiting 120 s
    version = writer.execute("PRAGMA data_version").fetchone()[0]
    writer.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    assert store.claim(ClaimRequest(agent, capacity(), 4, 30.0)) == []
    writer.execute("COMMIT")
    assert writer.execute("PRAGMA data_version").fetchone()[0] == version


def test_a_claim_that_may_take_a_job_still_waits_for_the_write_lock(
    connections: Connections, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, writer = connections
    agent = store.register_agent(make_agent())
    store.submit(make_submission())
    monkeypatch.setattr(sqlite_engine, "BUSY_TIMEOUT_S", 0.05)
    writer.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreUnavailable, match="locked"):
        store.claim(ClaimRequest(agent, capacity(), 4, 30.0))
    writer.execute("COMMIT")
    assert len(store.claim(ClaimRequest(agent, capacity(), 4, 30.0))) == 1


def test_a_writer_waits_for_a_lock_held_elsewhere_and_then_commits(
    connections: Connections,
) -> None:
    store, writer = connections
    writer.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, lambda: writer.execute("COMMIT"))
    release.start()
    started = time.monotonic()
    [job_id] = store.submit(make_submission())
    release.join()
    assert time.monotonic() - started >= 0.25
    assert store.get_job(job_id).state is JobState.QUEUED
    timeout_ms = int(BUSY_TIMEOUT_S * 1000)
    assert store._conn.execute("PRAGMA busy_timeout").fetchone()[0] == timeout_ms


def test_a_writer_gives_up_with_a_clear_error_when_the_lock_never_comes(
    connections: Connections, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, writer = connections
    monkeypatch.setattr(sqlite_engine, "BUSY_TIMEOUT_S", 0.2)
    writer.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"c\.db: database is locked"):
        store.submit(make_submission())
    assert 0.2 <= time.monotonic() - started < 2.0
    writer.execute("COMMIT")
    assert store.submit(make_submission())  # the store is usable again


def test_every_named_query_is_valid_sql(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.db")
    try:
        for sql in queries.load().values():
            text = sql.format(ids="1", where="", job_clause="", expect="'x'")
            store._conn.execute(f"EXPLAIN {text}", {k: None for k in _params(text)})
    finally:
        store.close()


def _params(sql: str) -> set[str]:
    import re

    return set(re.findall(r"(?<!:):(\w+)", sql))


def test_removing_a_job_deletes_the_log_tails_of_all_its_attempts(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.db")
    try:
        (job_id,) = store.submit(make_submission())
        agent = store.register_agent(make_agent())
        (c,) = store.claim(ClaimRequest(agent, capacity(), 1, 0.05))
        store.push_logs(agent, [LogTail(c.attempt_id, "stdout", 0, b"x" * 10)])
        store.push_logs(agent, [LogTail(c.attempt_id, "stderr", 0, b"y")])
        rows = "SELECT count(*) FROM log_tails"
        assert store._conn.execute(rows).fetchone()[0] == 2
        time.sleep(0.1)
        assert store.sweep(lost_cap=3, agent_timeout_s=3600).lost_attempts  # rows kept
        store.kill([job_id])
        assert store._conn.execute(rows).fetchone()[0] == 2
        store.remove([job_id])
        assert store._conn.execute(rows).fetchone()[0] == 0
    finally:
        store.close()
