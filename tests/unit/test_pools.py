"""Pools and manager settings from clobi.toml: parsed, defaulted, every problem listed by key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from clobi.errors import ConfigError
from clobi.model.pools import GIB, PoolSpec, parse_manager, parse_pools, pool_to_table

BURST = """
[pools.owned]
provider = "local"
cpus = 2
min = 1
max = 2

[pools.cloud]
provider = "simulated"
cpus = 2
memory = "4GiB"
labels = ["linux"]
cost_per_hour = 0.10
max = 6
idle_timeout = "30s"
boot_timeout = "2m"
boot_delay = "5s"
"""


def test_pools_are_read_in_order_with_defaults_and_provider_settings_apart() -> None:
    owned, cloud = parse_pools(tomllib.loads(BURST)["pools"])
    assert owned == PoolSpec(
        name="owned", provider="local", cpus=2.0, memory_bytes=4 * GIB, min=1, max=2
    )
    assert cloud.max == 6 and cloud.min == 0 and cloud.cost_per_hour == 0.10
    assert cloud.idle_timeout_s == 30 and cloud.boot_timeout_s == 120
    assert cloud.labels == frozenset({"linux"}) and cloud.memory_bytes == 4 * GIB
    assert dict(cloud.settings) == {"boot_delay": "5s"}


def test_every_problem_of_every_pool_is_listed_with_its_key() -> None:
    table = {
        "a": {"provider": "local", "min": 3, "max": 2},
        "b": {"cpus": -1, "labels": "ssd", "idle_timeout": "soon"},
        "bad name!": {"provider": "local"},
    }
    with pytest.raises(ConfigError) as caught:
        parse_pools(table, "/s/clobi.toml")
    problems = caught.value.problems
    assert "pools.a.min: 3 is more than max (2)" in problems
    assert any(p.startswith("pools.b.provider: missing") for p in problems)
    assert any(p.startswith("pools.b.cpus:") for p in problems)
    assert any(p.startswith("pools.b.labels:") for p in problems)
    assert any(p.startswith("pools.b.idle_timeout:") for p in problems)
    assert any(p.startswith("pools.bad name!:") for p in problems)
    assert str(caught.value).startswith("/s/clobi.toml: 6 problems")


def test_a_pool_written_back_as_a_table_reads_back_equal() -> None:
    for pool in parse_pools(tomllib.loads(BURST)["pools"]):
        assert parse_pools({pool.name: pool_to_table(pool)}) == [pool]


def test_manager_settings_have_defaults_and_checked_values() -> None:
    assert parse_manager({}).tick_s == 2.0
    settings = parse_manager({"tick": "500ms", "budget_per_hour": 1.5, "idle_votes": 2})
    assert (settings.tick_s, settings.budget_per_hour, settings.idle_votes) == (0.5, 1.5, 2)
    with pytest.raises(ConfigError) as caught:
        parse_manager({"tick": 0, "budget": 3})
    assert [p.split(":")[0] for p in caught.value.problems] == ["manager.tick", "manager.budget"]


def test_a_pools_file_lists_its_value_problems_and_unknown_providers_together(
    tmp_path: Path,
) -> None:
    from clobi.manager.config import read_pools

    config = tmp_path / "clobi.toml"
    config.write_text('[pools.x]\nprovider = "nope"\nmax = -1\n[pools.y]\nprovider = "cloud9"\n')
    with pytest.raises(ConfigError) as caught:
        read_pools(config)
    assert caught.value.problems == [
        "pools.x.max: must be from 0 to 100000, not -1",
        "pools.x.provider: unknown provider 'nope' (known: ec2, local, simulated, ssh)",
        "pools.y.provider: unknown provider 'cloud9' (known: ec2, local, simulated, ssh)",
    ]
