"""What is particular to the PostgreSQL engine: schema and migrations, concurrent claims,
LISTEN/NOTIFY wake-ups, sweeper election, the database clock, durability, reconnecting.

Needs PostgreSQL at CLOBI_TEST_PG_URL (default postgresql://postgres@127.0.0.1:5432/test);
skipped without it, except under CI=true.
"""

from __future__ import annotations

import random
import re
import select
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from clobi.errors import MissingExtra, StoreUnavailable
from clobi.model.records import Claim, Outcome
from clobi.model.states import AttemptState, JobState
from clobi.store import queries
from clobi.store.base import ClaimRequest, Wakeup
from clobi.store.pgconn import PgCursor, pyformat
from clobi.store.postgres import PostgresStore, migrate
from tests.conftest import capacity, make_agent, make_submission, need
from tests.contract.conftest import PG_URL, pg_database, pg_reachable

OpenStore = Callable[[], PostgresStore]


@pytest.fixture
def postgres() -> None:
    """The tests that need a server use this (or `url`); the others run anywhere."""
    need(pg_reachable(), f"PostgreSQL at {PG_URL} (set CLOBI_TEST_PG_URL)")


@pytest.fixture
def url(postgres: None) -> Iterator[str]:
    """A fresh database with the schema migrated."""
    with pg_database() as url:
        yield url


@pytest.fixture
def open_store(url: str) -> Iterator[OpenStore]:
    """Opens stores (each: its own connection) on one fresh database; closes them after."""
    opened: list[PostgresStore] = []

    def open_one() -> PostgresStore:
        opened.append(PostgresStore.from_url(url))
        return opened[-1]

    yield open_one
    for store in opened:
        store.close()


def admin(url: str, sql: str, *params: Any) -> list[Any]:
    """Run one statement on its own autocommit connection."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql.encode(), params or None)
        return cur.fetchall() if cur.description else []


# --- schema and migrations ------------------------------------------------------------------
def test_every_shared_migration_has_a_postgres_migration_of_the_same_number() -> None:
    assert [v for v, _ in queries.migrations("postgres")] == [v for v, _ in queries.migrations()]


def _schema_of(url: str) -> dict[str, set[tuple[Any, ...]]]:
    """Tables, columns, indexes, constraints, functions and triggers, from the catalogs;
    without the version table, which the migration runner keeps for itself."""
    skip = "clobi_schema_version"
    return {
        "columns": set(
            admin(
                url,
                "SELECT table_name, column_name, ordinal_position, data_type, is_nullable,"
                " column_default, is_identity, identity_generation"
                " FROM information_schema.columns"
                " WHERE table_schema = 'public' AND table_name <> %s",
                skip,
            )
        ),
        "indexes": set(
            admin(
                url,
                "SELECT tablename, indexname, indexdef FROM pg_indexes"
                " WHERE schemaname = 'public' AND tablename <> %s",
                skip,
            )
        ),
        "constraints": set(
            admin(
                url,
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
                " FROM pg_constraint WHERE connamespace = 'public'::regnamespace"
                " AND conrelid::regclass::text <> %s",
                skip,
            )
        ),
        "functions": set(
            admin(
                url,
                "SELECT proname, pg_get_functiondef(oid) FROM pg_proc"
                " WHERE pronamespace = 'public'::regnamespace",
            )
        ),
        "triggers": set(
            admin(
                url, "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal"
            )
        ),
    }


def test_migrating_from_empty_gives_exactly_the_current_schema(postgres: None) -> None:
    with pg_database(template=False) as migrated, pg_database(template=False) as reference:
        with psycopg.connect(migrated) as conn:
            version = migrate(conn)
        admin(reference, queries.sql_file("schema.sql", "postgres"))
        schema = _schema_of(migrated)
        assert schema == _schema_of(reference)
        assert len(schema["columns"]) > 50 and len(schema["indexes"]) > 10
    assert version == max(v for v, _ in queries.migrations("postgres"))


def test_migrating_twice_changes_nothing(url: str) -> None:
    before = _schema_of(url)
    with psycopg.connect(url) as conn:
        assert migrate(conn) == max(v for v, _ in queries.migrations("postgres"))
    assert _schema_of(url) == before


def test_concurrent_starters_migrate_an_empty_database_once(postgres: None) -> None:
    with pg_database(template=False) as url:
        errors: list[BaseException] = []

        def start() -> None:
            try:
                PostgresStore.from_url(url).close()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=start) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        versions = admin(url, "SELECT version FROM clobi_schema_version ORDER BY version")
        assert [v for (v,) in versions] == [v for v, _ in queries.migrations("postgres")]


def test_every_named_query_is_valid_sql(open_store: OpenStore) -> None:
    store = open_store()
    for sql in queries.load(dialect="postgres").values():
        text = pyformat(sql.format(ids="1", where="", job_clause="", expect="'x'"))
        params = dict.fromkeys(re.findall(r"%\((\w+)\)s", text))
        if params:
            text = f"EXPLAIN {text}"  # plans the statement without running it
        store._conn.execute(text.encode(), params or None)  # the rest runs, and is undone
        store._conn.rollback()


def test_parameters_are_translated_around_casts_quotes_and_comments() -> None:
    sql = "SELECT a::int, ':x', \"b:c\", :p -- see :q, 5%\nFROM t WHERE d LIKE '%' || :r"
    assert pyformat(sql) == (
        "SELECT a::int, ':x', \"b:c\", %(p)s -- see :q, 5%%\nFROM t WHERE d LIKE '%%' || %(r)s"
    )


# --- claims -----------------------------------------------------------------------------------
def test_skip_locked_claimers_on_four_connections_get_disjoint_jobs(
    open_store: OpenStore,
) -> None:
    ids = set(open_store().submit(make_submission(count=2000)))
    got: list[list[int]] = [[] for _ in range(4)]

    def worker(n: int) -> None:
        store = open_store()
        agent = store.register_agent(make_agent(f"a{n}"))
        rng = random.Random(n)
        done: list[Outcome] = []
        while True:
            then = ClaimRequest(agent, capacity(cpus=8), rng.randint(1, 8), 30.0)
            _, claims = store.finish(agent, done, then)
            if not claims:
                return
            got[n].extend(c.job_id for c in claims)
            done = [Outcome(c.attempt_id, AttemptState.SUCCEEDED, exit_code=0) for c in claims]

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [job for mine in got for job in mine]
    assert len(every) == len(set(every)) and set(every) == ids
    assert all(got), "every claimer got work"
    counts = open_store().count_states()
    assert counts[JobState.SUCCEEDED] + counts[JobState.RUNNING] == len(ids)


def test_a_claim_does_not_wait_for_another_claimer_s_open_transaction(
    open_store: OpenStore,
) -> None:
    first, second = open_store(), open_store()
    ids = first.submit(make_submission(count=40))
    agent = first.register_agent(make_agent())
    request = ClaimRequest(agent, capacity(cpus=2), 2, 30.0)
    other: list[int] = []
    with first._tx() as cur:
        held = [c.job_id for c in first._claim(cur, request, first._now(), [])]
        thread = threading.Thread(
            target=lambda: other.extend(c.job_id for c in second.claim(request))
        )
        thread.start()
        thread.join(timeout=10)
        assert not thread.is_alive(), "the second claimer waited for the first"
    # The first claimer's whole scan window stays locked until it commits (it locked more
    # candidates than it took); the second skips past it instead of waiting.
    assert held == ids[:2] and len(other) == 2 and min(other) > max(held)


@pytest.mark.slow
def test_the_claim_query_walks_the_queue_index_with_a_million_queued_jobs(
    url: str, open_store: OpenStore
) -> None:
    store = open_store()
    store.submit(make_submission())
    # Unlogged and indexed afterwards: the test is about the plan, not about loading.
    admin(url, "ALTER TABLE jobs SET UNLOGGED")
    schema = queries.sql_file("schema.sql", "postgres")
    admin(url, "DROP INDEX " + ", ".join(re.findall(r"CREATE INDEX (jobs_\w+)", schema)))
    admin(
        url,
        "INSERT INTO jobs (spec_id, state, priority, cpus, memory_bytes, gpus, created_at,"
        " updated_at, retries_left)"
        " SELECT 1, CASE WHEN i % 10 = 0 THEN 'succeeded' ELSE 'queued' END, i % 3, 1, 0, 0,"
        " 0, 0, 0 FROM generate_series(1, 1000000) i",
    )
    for statement in schema.split(";"):
        if "CREATE INDEX jobs_" in statement:
            admin(url, statement)
    admin(url, "ANALYZE jobs")
    for mode in ("force_custom_plan", "force_generic_plan"):
        _assert_walks_the_index(_claim_plan(url, mode, CLAIM_PARAMS))
    agent = store.register_agent(make_agent())
    claims = store.claim(ClaimRequest(agent, capacity(), 4, 30.0))
    assert len(claims) == 4
    assert {store.get_job(c.job_id).priority for c in claims} == {2}  # the highest first


def test_a_claim_walks_the_index_before_the_queue_was_ever_analyzed(
    url: str, open_store: OpenStore
) -> None:
    # A big submit into a new database: until autovacuum analyzes the table, the planner
    # takes the queue for tiny and, left alone, would sort all of it on every claim.
    open_store().submit(make_submission(count=20_000))
    assert admin(url, "SELECT last_autoanalyze FROM pg_stat_user_tables WHERE relname = 'jobs'")[
        0
    ] == (None,)
    _assert_walks_the_index(_claim_plan(url, "auto", CLAIM_PARAMS))


CLAIM_PARAMS = {"now": 2e9, "cpus": 4.0, "memory": 8 << 30, "gpus": 0, "scan": 16}


def _assert_walks_the_index(plan: str) -> None:
    assert "Index Scan using jobs_queue" in plan and "Sort" not in plan, plan
    assert plan.splitlines()[1].strip().startswith("->  LockRows"), plan


def _claim_plan(url: str, mode: str, params: dict[str, Any]) -> str:
    """The plan of the claim query as a claim transaction runs it, custom (for these values)
    or generic (as a prepared statement may come to use)."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    q = queries.load(dialect="postgres")
    sql = re.sub(r"(?<!:):([A-Za-z_]\w*)", number, q["claim_candidates"])
    values = ", ".join(repr(params[n]) for n in names)
    with psycopg.connect(url) as conn:
        conn.execute(f"SET plan_cache_mode = {mode}".encode())
        conn.execute(q["claim_plan"].encode())
        conn.execute(f"PREPARE claim AS {sql}".encode())
        rows = conn.execute(f"EXPLAIN EXECUTE claim({values})".encode()).fetchall()
        conn.rollback()
    return "\n".join(r[0] for r in rows)


# --- wake-ups ---------------------------------------------------------------------------------
def _woken(bell: Wakeup, within_s: float = 5.0) -> bool:
    """Wait on the handle as an agent does: readable, then `rang()`, until the deadline."""
    deadline = time.monotonic() + within_s
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([bell.fileno()], [], [], left)
        if readable and bell.rang():
            return True
    return False


def test_a_submit_wakes_a_listener_at_once(open_store: OpenStore) -> None:
    listener, submitter = open_store(), open_store()
    bell = listener.listen("agent-1")
    assert bell is not None and not bell.rang()
    started = time.monotonic()
    submitter.submit(make_submission())
    assert _woken(bell)
    assert time.monotonic() - started < 2.0
    assert not bell.rang(), "one submit, one wake-up"
    bell.close()


def test_retries_and_requeueing_sweeps_wake_listeners(open_store: OpenStore) -> None:
    store = open_store()
    bell = open_store().listen("agent-1")
    assert bell is not None
    (job_id,) = store.submit(make_submission())
    assert _woken(bell)
    agent = store.register_agent(make_agent())
    store.claim(ClaimRequest(agent, capacity(), 1, 0.05))
    time.sleep(0.1)
    assert store.sweep(lost_cap=3, agent_timeout_s=60).requeued_jobs == (job_id,)
    assert _woken(bell)
    store.kill([job_id])
    assert store.retry([job_id]) == [job_id]
    assert _woken(bell)


def test_a_rolled_back_submit_wakes_nobody(open_store: OpenStore) -> None:
    store = open_store()
    bell = open_store().listen("agent-1")
    assert bell is not None
    with pytest.raises(RuntimeError), store._tx():
        store.submit(make_submission())
        raise RuntimeError("abandon the transaction")
    assert not _woken(bell, within_s=0.3)
    assert sum(store.count_states().values()) == 0


def test_a_listener_whose_connection_is_lost_wakes_and_listens_again(
    url: str, open_store: OpenStore
) -> None:
    store = open_store()
    bell = store.listen("agent-1")
    assert bell is not None
    ended = admin(
        url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    assert ended == [(True,)]
    assert _woken(bell), "a lost connection may have missed a notification"
    store.submit(make_submission())
    assert _woken(bell)


def _eventually(check: Callable[[], bool], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# --- sweeper election -------------------------------------------------------------------------
def _advisory_holders(url: str) -> list[int]:
    rows = admin(
        url,
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    return [pid for (pid,) in rows]


def test_one_sweeper_is_elected_across_stores_and_a_dead_one_is_replaced_at_once(
    url: str, open_store: OpenStore
) -> None:
    one, two = open_store(), open_store()
    assert one.try_lock("sweeper", "one", ttl_s=30)
    assert not two.try_lock("sweeper", "two", ttl_s=30)
    assert one.try_lock("sweeper", "one", ttl_s=30)
    assert len(_advisory_holders(url)) == 1
    one.close()  # as if it died: its session ends, and the advisory lock with it
    # The server lets go when the closed session's backend has exited, a moment later.
    assert _eventually(lambda: two.try_lock("sweeper", "two", ttl_s=30), within_s=5.0)
    assert admin(url, "SELECT owner FROM locks WHERE name = 'sweeper'") == [("two",)]


def test_a_sweeper_that_stops_renewing_loses_the_lock_after_its_ttl(
    open_store: OpenStore,
) -> None:
    one, two = open_store(), open_store()
    assert one.try_lock("sweeper", "one", ttl_s=0.3)
    assert not two.try_lock("sweeper", "two", ttl_s=0.3)
    time.sleep(0.6)
    assert two.try_lock("sweeper", "two", ttl_s=5)
    assert not one.try_lock("sweeper", "one", ttl_s=5)
    assert two.try_lock("sweeper", "two", ttl_s=5)


# --- clock, durability, connections ---------------------------------------------------------
def test_leases_follow_the_database_clock_not_the_local_one(
    open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store()
    store.submit(make_submission())
    agent = store.register_agent(make_agent())
    monkeypatch.setattr(time, "time", lambda: 0.0)  # a host whose clock is badly off
    (claim,) = store.claim(ClaimRequest(agent, capacity(), 1, 30.0))
    monkeypatch.undo()
    assert abs(claim.lease_until - (time.time() + 30.0)) < 5.0


def test_one_clock_reading_per_transaction(open_store: OpenStore) -> None:
    store = open_store()
    with store._tx():
        first = store._now()
        time.sleep(0.01)
        assert store._now() == first
    with store._tx():
        assert store._now() > first


def test_reporting_and_claiming_a_batch_costs_as_many_round_trips_as_one_job(
    open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store()
    agent = store.register_agent(make_agent(cpus=16))
    store.submit(make_submission(count=48))
    sent: list[int] = []  # per round trip, how many statements the server ran
    monkeypatch.setattr(PgCursor, "execute", _counted(PgCursor.execute, sent, many=False))
    monkeypatch.setattr(PgCursor, "executemany", _counted(PgCursor.executemany, sent, many=True))

    def turn(claims: list[Claim], limit: int) -> tuple[list[Claim], int, int]:
        sent.clear()
        outcomes = [Outcome(c.attempt_id, AttemptState.SUCCEEDED, exit_code=0) for c in claims]
        _, more = store.finish(agent, outcomes, ClaimRequest(agent, capacity(16), limit, 30.0))
        return more, len(sent), sum(sent)

    one = store.claim(ClaimRequest(agent, capacity(16), 1, 30.0))
    one, trips_one, ran_one = turn(one, 1)
    batch, _, _ = turn(one, 16)
    batch, trips, ran = turn(batch, 16)
    assert len(batch) == 16
    assert trips == trips_one  # executemany is one round trip (a pipeline)
    assert ran - ran_one <= 2 * 15  # per job: its attempt's end and its job's end


def _counted(method: Callable[..., Any], sent: list[int], many: bool) -> Callable[..., Any]:
    def counted(self: PgCursor, sql: str, params: Any = None, /) -> Any:
        sent.append(len(params) if many else 1)
        return method(self, sql, params)

    return counted


def test_commits_are_durable_and_read_committed_whatever_the_database_defaults(url: str) -> None:
    dbname = admin(url, "SELECT current_database()")[0][0]
    admin(url, f"ALTER DATABASE {dbname} SET synchronous_commit = off")
    admin(url, f"ALTER DATABASE {dbname} SET default_transaction_isolation = serializable")
    store = PostgresStore.from_url(url)
    try:
        with store._tx() as cur:
            cur.execute("SHOW synchronous_commit")
            assert cur.fetchone()[0] == "on"
            cur.execute("SHOW transaction_isolation")
            assert cur.fetchone()[0] == "read committed"
    finally:
        store.close()


def test_a_claim_alone_commits_without_waiting_for_the_wal_flush(
    open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store()
    agent = store.register_agent(make_agent())
    store.submit(make_submission(count=2))
    settings: list[str] = []
    original = PgCursor.execute

    def execute(self: PgCursor, sql: str, params: Any = None, /) -> Any:
        result = original(self, sql, params)
        if "FROM jobs" in sql and "queued" in sql:  # the claim's look at the queue
            settings.append(_value_of(self, "SHOW synchronous_commit"))
        return result

    monkeypatch.setattr(PgCursor, "execute", execute)
    [claim] = store.claim(ClaimRequest(agent, capacity(), 1, 30.0))
    assert settings and set(settings) == {"off"}
    settings.clear()
    outcome = Outcome(claim.attempt_id, AttemptState.SUCCEEDED, exit_code=0)
    store.finish(agent, [outcome], ClaimRequest(agent, capacity(), 1, 30.0))
    assert settings and set(settings) == {"on"}  # a report with a claim stays durable
    monkeypatch.undo()
    with store._tx() as cur:  # SET LOCAL ended with the claim's transaction
        cur.execute("SHOW synchronous_commit")
        assert cur.fetchone()[0] == "on"


def _value_of(cur: PgCursor, sql: str) -> str:
    """A setting as this cursor's transaction sees it."""
    row = cur._raw.connection.execute(sql).fetchone()
    assert row is not None
    return str(row[0])


def test_a_connection_the_server_ended_is_replaced(url: str, open_store: OpenStore) -> None:
    store = open_store()
    (job_id,) = store.submit(make_submission())
    admin(url, "SELECT pg_terminate_backend(%s)", store._conn.info.backend_pid)
    time.sleep(0.1)
    assert store.get_job(job_id).state is JobState.QUEUED


def test_an_unreachable_server_is_store_unavailable_without_the_password() -> None:
    with pytest.raises(StoreUnavailable, match="cannot connect") as caught:
        PostgresStore.from_url("postgresql://clobi:s3cret@127.0.0.1:1/none?connect_timeout=2")
    assert "s3cret" not in str(caught.value)


def test_a_closed_store_closes_its_listeners_and_lock_sessions(
    url: str, open_store: OpenStore
) -> None:
    store = open_store()
    store.listen("agent-1")
    store.try_lock("sweeper", "me", ttl_s=30)
    store.close()
    time.sleep(0.1)
    sessions = admin(
        url,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid()",
    )
    assert sessions == [(0,)]


def test_threads_sharing_a_store_commit_on_connections_of_their_own(
    open_store: OpenStore,
) -> None:
    store = open_store()
    all_open = threading.Barrier(3)
    backends: list[int] = []

    def transaction() -> None:
        with store._tx() as cur:
            cur.execute("SELECT pg_backend_pid()")
            backends.append(cur.fetchone()[0])
            all_open.wait(timeout=10)  # none waits for another's transaction to end

    threads = [threading.Thread(target=transaction) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(backends)) == 3
    (job_id,) = store.submit(make_submission())  # and the store goes on as before
    assert store.get_job(job_id).state is JobState.QUEUED


def test_a_store_keeps_at_most_its_pool_size_of_transactions_open(url: str) -> None:
    store = PostgresStore(url, pool_size=2)
    lock, inside, most = threading.Lock(), [0], [0]
    backends: set[int] = set()

    def transaction() -> None:
        with store._tx() as cur:
            cur.execute("SELECT pg_backend_pid()")
            with lock:
                backends.add(cur.fetchone()[0])
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.05)
            with lock:
                inside[0] -= 1

    try:
        threads = [threading.Thread(target=transaction) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        store.close()
    assert most[0] == 2 and len(backends) == 2


# --- the composition root ---------------------------------------------------------------------
def test_a_postgresql_url_opens_a_postgres_store(url: str, tmp_path: Path) -> None:
    from clobi.session import open_store

    dsn = psycopg.conninfo.conninfo_to_dict(url)
    store = open_store(
        f"postgresql://{dsn.get('user', 'postgres')}@{dsn.get('host', '127.0.0.1')}"
        f":{dsn.get('port', 5432)}/{dsn['dbname']}",
        tmp_path,
    )
    try:
        assert isinstance(store, PostgresStore)
    finally:
        store.close()


def test_a_missing_psycopg_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from clobi.session import open_store

    monkeypatch.delitem(sys.modules, "clobi.store.postgres")
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(MissingExtra, match=re.escape("pip install clobi[postgres]")):
        open_store("postgres://u:secret@db/clobi", tmp_path)
