"""Loads the named queries of `sql/queries.sql` (`-- name: X` blocks).

A dialect (`postgres`) keeps its own folder, `sql/<dialect>/`, with its schema, its numbered
migrations and a `queries.sql` holding only the queries whose SQL differs (plus any the engine
alone needs); `load(dialect=...)` lays those over the shared ones.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_PACKAGE = "clobi.store.sql"
_ON_DISK = Path(__file__).with_name("sql")


@cache
def load(filename: str = "queries.sql", dialect: str | None = None) -> dict[str, str]:
    """Query name -> SQL text, from a file in `clobi/store/sql`, with the same file of
    `clobi/store/sql/<dialect>` (when given) overriding queries of the same name."""
    named = _parse(_folder(None).joinpath(filename).read_text(encoding="utf-8"))
    if dialect is not None:
        named.update(_parse(_folder(dialect).joinpath(filename).read_text(encoding="utf-8")))
    return named


def sql_file(filename: str, dialect: str | None = None) -> str:
    """The text of one SQL file (schema or migration)."""
    return _folder(dialect).joinpath(filename).read_text(encoding="utf-8")


def migrations(dialect: str | None = None) -> list[tuple[int, str]]:
    """Numbered migrations, in order: (version, sql)."""
    found = []
    for entry in _folder(dialect).joinpath("migrations").iterdir():
        match = re.match(r"^(\d+)_.*\.sql$", entry.name)
        if match:
            found.append((int(match.group(1)), entry.read_text(encoding="utf-8")))
    return sorted(found)


def _folder(dialect: str | None) -> Traversable:
    # Installed packages keep the SQL files on disk beside this module: read them there, as
    # importlib.resources would, without its import cost (~4 ms of every `clobi` command that
    # opens a store). importlib.resources serves the other cases (a zipped install).
    folder = _ON_DISK if dialect is None else _ON_DISK / dialect
    if folder.is_dir():
        return folder
    from importlib import resources

    return resources.files(_PACKAGE if dialect is None else f"{_PACKAGE}.{dialect}")


def _parse(text: str) -> dict[str, str]:
    parts = _NAME.split(text)
    return {
        name: body.strip().rstrip(";") for name, body in zip(parts[1::2], parts[2::2], strict=True)
    }
