"""Pools and the manager's tunables as declared in `clobi.toml`, parsed and checked. Pure.

```toml
[manager]
tick = "2s"                 # how often the manager observes, decides and acts
budget_per_hour = 5.0       # the most all pools together may cost per hour (none: no cap)
idle_votes = 3              # consecutive idle observations before a pool shrinks

[pools.cloud]
provider = "simulated"      # local | simulated | ssh | ec2
cpus = 2                    # slots of one instance
memory = "4GiB"
gpus = 0
labels = ["linux"]
cost_per_hour = 0.10
min = 0
max = 6
idle_timeout = "60s"        # an idle instance is drained after this
boot_timeout = "5m"         # an instance whose agent has not joined by then is terminated
order = 0                   # fill order among pools of equal cost (lower first)
boot_delay = "5s"           # any other key is the provider's own setting
```

Every problem is listed with its key (`pools.cloud.max`) before one `ConfigError` is raised.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from clobi.errors import ConfigError
from clobi.model.records import Capacity
from clobi.model.units import format_bytes, parse_bytes, parse_duration_s

GIB = 1 << 30
MAX_INSTANCES = 100_000
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_LABEL = re.compile(r"[A-Za-z0-9_.:=-]{1,64}")


@dataclass(frozen=True)
class PoolSpec:
    """One pool: where its machines come from, what one offers, how many, at what cost."""

    name: str
    provider: str
    cpus: float = 1.0
    memory_bytes: int = 2 * GIB
    gpus: int = 0
    labels: frozenset[str] = frozenset()
    cost_per_hour: float = 0.0
    min: int = 0
    max: int = 1
    idle_timeout_s: float = 60.0
    boot_timeout_s: float = 300.0
    order: int = 0
    settings: Mapping[str, Any] = field(default_factory=dict)  # the provider's own keys

    @property
    def slots(self) -> Capacity:
        """What one instance of the pool offers."""
        return Capacity(self.cpus, self.memory_bytes, self.gpus, self.labels)


@dataclass(frozen=True)
class ManagerSettings:
    """The `[manager]` table."""

    tick_s: float = 2.0
    budget_per_hour: float | None = None
    idle_votes: int = 3


@dataclass
class _Problems:
    found: list[str] = field(default_factory=list)

    def add(self, key: str, message: str) -> None:
        self.found.append(f"{key}: {message}")


def parse_pools(table: object, source: str = "clobi.toml") -> list[PoolSpec]:
    """The `[pools.*]` tables, in declaration order; raises `ConfigError` listing every problem."""
    problems = _Problems()
    pools = []
    if not isinstance(table, Mapping):
        raise ConfigError(["pools: must be a table of pools, e.g. [pools.cloud]"], source)
    for name, body in table.items():
        pool = _parse_pool(str(name), body, problems)
        if pool is not None:
            pools.append(pool)
    if problems.found:
        raise ConfigError(problems.found, source)
    return pools


def parse_manager(table: object, source: str = "clobi.toml") -> ManagerSettings:
    """The `[manager]` table; raises `ConfigError` listing every problem."""
    problems = _Problems()
    if not isinstance(table, Mapping):
        raise ConfigError(["manager: must be a table"], source)
    values: dict[str, Any] = {}
    for key, value in table.items():
        path = f"manager.{key}"
        if key == "tick":
            values["tick_s"] = _check(path, value, _positive_duration, problems)
        elif key == "budget_per_hour":
            values["budget_per_hour"] = _check(path, value, _cost, problems)
        elif key == "idle_votes":
            values["idle_votes"] = _check(path, value, _count(1, 1000), problems)
        else:
            problems.add(path, "unknown key (known: tick, budget_per_hour, idle_votes)")
    if problems.found:
        raise ConfigError(problems.found, source)
    return ManagerSettings(**{k: v for k, v in values.items() if v is not None})


_COMMON: dict[str, tuple[str, Callable[[object], Any]]] = {}


def _parse_pool(name: str, body: object, problems: _Problems) -> PoolSpec | None:
    where = f"pools.{name}"
    if not _NAME.fullmatch(name):
        problems.add(where, "a pool name is 1-64 letters, digits, '-' or '_'")
    if not isinstance(body, Mapping):
        problems.add(where, "must be a table")
        return None
    before = len(problems.found)
    values: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    for key, value in body.items():
        known = _COMMON.get(str(key))
        if known is None:
            settings[str(key)] = value
            continue
        field_name, parse = known
        values[field_name] = _check(f"{where}.{key}", value, parse, problems)
    if "provider" not in values:
        problems.add(f"{where}.provider", "missing (local, simulated, ssh or ec2)")
    lo, hi = values.get("min", 0), values.get("max", max(1, values.get("min", 0) or 0))
    if isinstance(lo, int) and isinstance(hi, int) and lo > hi:
        problems.add(f"{where}.min", f"{lo} is more than max ({hi})")
    if len(problems.found) > before:
        return None
    values.setdefault("max", hi)
    if "memory_bytes" not in values:
        values["memory_bytes"] = max(GIB, round(values.get("cpus", 1.0) * 2 * GIB))
    return PoolSpec(name=name, settings=settings, **values)


def _check(path: str, value: object, parse: Callable[[object], Any], problems: _Problems) -> Any:
    try:
        return parse(value)
    except ValueError as exc:
        problems.add(path, str(exc))
        return None


def _provider(value: object) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError("must be a provider name: local, simulated, ssh or ec2")
    return value


def _cpus(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number of cpus, e.g. 2 or 0.5")
    if not math.isfinite(value) or value <= 0 or value > 100_000:
        raise ValueError("must be more than 0")
    return float(value)


def _memory(value: object) -> int:
    size = parse_bytes(value)
    if size <= 0:
        raise ValueError('must be more than 0, e.g. "4GiB"')
    return size


def _count(lo: int, hi: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be a whole number from {lo} to {hi}")
        if not lo <= value <= hi:
            raise ValueError(f"must be from {lo} to {hi}, not {value}")
        return value

    return parse


def _cost(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a cost per hour, e.g. 0.10")
    if not math.isfinite(value) or value < 0:
        raise ValueError("must be 0 or more")
    return float(value)


def _labels(value: object) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError('must be a list of labels, e.g. ["linux", "ssd"]')
    bad = [v for v in value if not _LABEL.fullmatch(v)]
    if bad:
        raise ValueError(f"bad label {bad[0]!r}: 1-64 letters, digits or _.:=-")
    return frozenset(value)


def _positive_duration(value: object) -> float:
    seconds = parse_duration_s(value)
    if seconds <= 0:
        raise ValueError('must be more than 0, e.g. "30s"')
    return seconds


def _order(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be a whole number")
    return value


_COMMON.update(
    {
        "provider": ("provider", _provider),
        "cpus": ("cpus", _cpus),
        "memory": ("memory_bytes", _memory),
        "gpus": ("gpus", _count(0, 1024)),
        "labels": ("labels", _labels),
        "cost_per_hour": ("cost_per_hour", _cost),
        "min": ("min", _count(0, MAX_INSTANCES)),
        "max": ("max", _count(0, MAX_INSTANCES)),
        "idle_timeout": ("idle_timeout_s", _positive_duration),
        "boot_timeout": ("boot_timeout_s", _positive_duration),
        "order": ("order", _order),
    }
)


def pool_to_table(pool: PoolSpec) -> dict[str, Any]:
    """The pool as a `[pools.NAME]` table (what `parse_pools` reads back to an equal pool)."""
    table: dict[str, Any] = {
        "provider": pool.provider,
        "cpus": int(pool.cpus) if pool.cpus.is_integer() else pool.cpus,
        "memory": _exact_size(pool.memory_bytes),
        "gpus": pool.gpus,
        "labels": sorted(pool.labels),
        "cost_per_hour": pool.cost_per_hour,
        "min": pool.min,
        "max": pool.max,
        "idle_timeout": f"{pool.idle_timeout_s:g}s",
        "boot_timeout": f"{pool.boot_timeout_s:g}s",
        "order": pool.order,
    }
    table.update(pool.settings)
    return table


def describe_slots(pool: PoolSpec) -> str:
    """`2 cpus, 4 GiB, 1 gpu, labels ssd` for messages."""
    parts = [f"{pool.cpus:g} cpus", format_bytes(pool.memory_bytes)]
    if pool.gpus:
        parts.append(f"{pool.gpus} gpu{'s' if pool.gpus > 1 else ''}")
    if pool.labels:
        parts.append("labels " + ",".join(sorted(pool.labels)))
    return ", ".join(parts)


def _exact_size(n: int) -> str | int:
    for unit, size in (("GiB", GIB), ("MiB", 1 << 20)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return n
