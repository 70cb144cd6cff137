"""Engines the contract suites run against. Add an engine here and every suite covers it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clobi.store.base import Store


def _sqlite(tmp_path: Path) -> Store:
    from clobi.store.sqlite import SqliteStore

    return SqliteStore(tmp_path / "clobi.db")


STORE_ENGINES = {"sqlite": _sqlite}


@pytest.fixture(params=sorted(STORE_ENGINES))
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[type]:
    """Opens stores on one shared database (each call: a new connection)."""
    opened: list[Store] = []

    def open_store() -> Store:
        store = STORE_ENGINES[request.param](tmp_path)
        opened.append(store)
        return store

    yield open_store  # type: ignore[misc]
    for store in opened:
        store.close()


@pytest.fixture
def store(store_factory: type) -> Store:
    return store_factory()  # type: ignore[no-any-return]
