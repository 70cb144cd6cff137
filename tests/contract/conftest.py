"""Engines the contract suites run against. Add an engine here and every suite covers it.

Each engine is a context manager: given a test's tmp_path it sets up one empty database and
yields a function that opens a new store (a new connection) on it; leaving it tears it down.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from clobi.store import queries
from clobi.store.base import Store
from tests.conftest import need

OpenStore = Callable[[], Store]

# Where the postgres engine's tests create their databases (needs CREATEDB).
PG_URL = os.environ.get("CLOBI_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


@contextlib.contextmanager
def _sqlite(tmp_path: Path) -> Iterator[OpenStore]:
    from clobi.store.sqlite import SqliteStore

    yield lambda: SqliteStore(tmp_path / "clobi.db")


@contextlib.contextmanager
def _postgres(tmp_path: Path) -> Iterator[OpenStore]:
    need(pg_reachable(), f"PostgreSQL at {PG_URL} (set CLOBI_TEST_PG_URL)")
    from clobi.store.postgres import PostgresStore

    with pg_database() as url:
        yield lambda: PostgresStore.from_url(url)


STORE_ENGINES: dict[str, Callable[[Path], contextlib.AbstractContextManager[OpenStore]]] = {
    "sqlite": _sqlite,
    "postgres": _postgres,
}


@pytest.fixture(params=sorted(STORE_ENGINES))
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens stores on one shared database (each call: a new connection)."""
    opened: list[Store] = []
    with STORE_ENGINES[request.param](tmp_path) as open_one:

        def open_store() -> Store:
            store = open_one()
            opened.append(store)
            return store

        yield open_store
        for store in opened:
            store.close()


@pytest.fixture
def store(store_factory: OpenStore) -> Store:
    return store_factory()


# --- PostgreSQL test databases ------------------------------------------------------------
@cache
def pg_reachable() -> bool:
    """True when PG_URL accepts connections (and psycopg is installed)."""
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3):
            return True
    except Exception:  # any failure means "not here"; the skip message names the URL
        return False


@contextlib.contextmanager
def pg_database(template: bool = True) -> Iterator[str]:
    """A new, uniquely named database (cloned from a migrated template unless `template` is
    False, then empty); yields its URL and drops it afterwards."""
    name = f"clobi_t_{uuid.uuid4().hex[:12]}"
    source = f" TEMPLATE {_pg_template()}" if template else ""
    _pg_admin(f"CREATE DATABASE {name}{source}")
    try:
        yield _pg_url(name)
    finally:
        _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@cache
def _pg_template() -> str:
    """A database with the schema migrated, named after the migrations so a changed schema
    gets a new template, and created under a temporary name so concurrent runs never clone a
    half-migrated one."""
    from clobi.store.postgres import PostgresStore

    digest = hashlib.sha256(repr(queries.migrations("postgres")).encode()).hexdigest()[:12]
    name = f"clobi_tpl_{digest}"
    if _pg_admin("SELECT 1 FROM pg_database WHERE datname = %s", name):
        return name
    scratch = f"{name}_{uuid.uuid4().hex[:8]}"
    _pg_admin(f"CREATE DATABASE {scratch}")
    PostgresStore.from_url(_pg_url(scratch)).close()
    try:
        _pg_admin(f"ALTER DATABASE {scratch} RENAME TO {name}")
    except Exception:
        _pg_admin(f"DROP DATABASE IF EXISTS {scratch} WITH (FORCE)")
        if not _pg_admin("SELECT 1 FROM pg_database WHERE datname = %s", name):
            raise
    return name


def _pg_admin(sql: str, *params: Any) -> list[Any]:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        cur = conn.execute(sql.encode(), params or None)
        return cur.fetchall() if cur.description else []


def _pg_url(dbname: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(PG_URL)
    params["dbname"] = dbname
    return make_conninfo("", **params)
