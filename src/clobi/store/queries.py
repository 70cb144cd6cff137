"""Loads the named queries of `sql/queries.sql` (`-- name: X` blocks)."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def load(filename: str = "queries.sql") -> dict[str, str]:
    """Query name -> SQL text, from a file in `clobi/store/sql`."""
    text = resources.files("clobi.store.sql").joinpath(filename).read_text(encoding="utf-8")
    parts = _NAME.split(text)
    return {
        name: body.strip().rstrip(";") for name, body in zip(parts[1::2], parts[2::2], strict=True)
    }


def sql_file(filename: str) -> str:
    """The text of one SQL file (schema or migration)."""
    return resources.files("clobi.store.sql").joinpath(filename).read_text(encoding="utf-8")


def migrations() -> list[tuple[int, str]]:
    """Numbered migrations, in order: (version, sql)."""
    folder = resources.files("clobi.store.sql").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = re.match(r"^(\d+)_.*\.sql$", entry.name)
        if match:
            found.append((int(match.group(1)), entry.read_text(encoding="utf-8")))
    return sorted(found)
