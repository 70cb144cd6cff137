"""The pools of a session, read from its `clobi.toml` and written back when changed at runtime.

The manager rereads the file when it changes, so an edit (or `clobi pool scale`) takes effect
at its next tick. A write keeps the previous file as `clobi.toml.bak`, keeps the user's
comments and layout (tomlkit), and replaces the file atomically.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from clobi.errors import ConfigError, NotFound
from clobi.manager.providers.registry import check_provider
from clobi.model.pools import ManagerSettings, PoolSpec, parse_manager, parse_pools, pool_to_table


@dataclass(frozen=True)
class PoolConfig:
    """What `clobi.toml` says about pools and the manager."""

    pools: tuple[PoolSpec, ...]
    settings: ManagerSettings

    def pool(self, name: str) -> PoolSpec:
        for p in self.pools:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.pools) or "none declared"
        raise NotFound(f"pool {name!r}: no such pool (pools: {known})")


def read_pools(path: Path) -> PoolConfig:
    """The pools and manager settings of the file; `ConfigError` lists every problem."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return PoolConfig((), ManagerSettings())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([str(exc)], str(path)) from None
    try:
        pools = parse_pools(data.get("pools", {}), str(path))
    except ConfigError as exc:  # with what the providers would say too
        raise ConfigError([*exc.problems, *_unknown_providers(data)], str(path)) from None
    problems = [f"pools.{p.name}.{problem}" for p in pools for problem in check_provider(p)]
    if problems:
        raise ConfigError(problems, str(path))
    return PoolConfig(tuple(pools), parse_manager(data.get("manager", {}), str(path)))


def _unknown_providers(data: dict[str, Any]) -> list[str]:
    from clobi.manager.providers.registry import PROVIDERS

    table = data.get("pools", {})
    if not isinstance(table, dict):
        return []
    known = ", ".join(sorted(PROVIDERS))
    return [
        f"pools.{name}.provider: unknown provider {body['provider']!r} (known: {known})"
        for name, body in table.items()
        if isinstance(body, dict)
        and isinstance(body.get("provider"), str)
        and body["provider"] not in PROVIDERS
    ]


def change_pool(path: Path, name: str, change: Callable[[PoolSpec], PoolSpec]) -> PoolSpec:
    """Apply `change` to one pool and write the file back (the old one kept as `.bak`)."""
    config = read_pools(path)
    new = change(config.pool(name))
    parse_pools({name: pool_to_table(new)}, str(path))  # refuse what would not read back
    _write_pool(path, new)
    return new


def scale(pool: PoolSpec, min_count: int | None, max_count: int | None) -> PoolSpec:
    """The pool with new bounds; a bound left out moves only as far as the other needs."""
    lo = pool.min if min_count is None else min_count
    hi = pool.max if max_count is None else max_count
    if min_count is None:
        lo = min(lo, hi)
    if max_count is None:
        hi = max(hi, lo)
    return replace(pool, min=lo, max=hi)


def _write_pool(path: Path, pool: PoolSpec) -> None:
    import tomlkit

    text = path.read_text(encoding="utf-8")
    doc = tomlkit.parse(text)
    pools: Any = doc.setdefault("pools", tomlkit.table(is_super_table=True))
    table: Any = pools.get(pool.name)
    if table is None:
        table = tomlkit.table()
        pools[pool.name] = table
    for key, value in pool_to_table(pool).items():
        if table.get(key) != value:
            table[key] = value
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(tomlkit.dumps(doc), encoding="utf-8")
    backup = path.with_name(path.name + ".bak")
    backup.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class PoolWatcher:
    """Rereads the file when it changes; keeps the last good config when an edit is bad."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self.config = PoolConfig((), ManagerSettings())
        self.error: ConfigError | None = None

    def current(self) -> PoolConfig:
        """The config as of now; a new error is kept in `error` (and reported once)."""
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = (0, 0)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self.config, self.error = read_pools(self.path), None
            except ConfigError as exc:
                self.error = exc
        return self.config
