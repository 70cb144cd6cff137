"""Shared fixtures and factories."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from clobi.model.records import AgentInfo, Capacity, Submission
from clobi.model.spec import ArraySpec, JobSpec, Resources, Retries

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(condition: bool, why: str) -> None:
    """Skip a test whose service or permission is missing here; under CI=true, fail instead."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required under CI=true: {why}")
    pytest.skip(why)


def make_spec(**overrides: Any) -> JobSpec:
    """A small valid spec; keyword arguments replace fields (`cpus=2` sets resources)."""
    resources = {
        k: overrides.pop(k)
        for k in ("cpus", "memory_bytes", "gpus", "walltime_s")
        if k in overrides
    }
    retries = overrides.pop("retries", None)
    count = overrides.pop("count", None)
    spec: dict[str, Any] = {"command": ("true",), **overrides}
    if resources:
        spec["resources"] = Resources(**resources)
    if isinstance(retries, int):
        spec["retries"] = Retries(count=retries, backoff_s=0.0)
    elif retries is not None:
        spec["retries"] = retries
    if count is not None:
        spec["array"] = ArraySpec(count=count)
    return JobSpec(**spec)


def make_submission(**overrides: Any) -> Submission:
    key = overrides.pop("idempotency_key", None)
    return Submission(spec=make_spec(**overrides), idempotency_key=key, owner="tester")


def make_agent(
    name: str = "agent-1",
    cpus: float = 4,
    memory_bytes: int = 8 << 30,
    gpus: int = 0,
    labels: frozenset[str] = frozenset(),
    *,
    pool: str = "local",
    instance_id: int | None = None,
) -> AgentInfo:
    return AgentInfo(
        name=name,
        host="testhost",
        cpus=cpus,
        memory_bytes=memory_bytes,
        gpus=gpus,
        labels=labels,
        pool=pool,
        instance_id=instance_id,
    )


def capacity(
    cpus: float = 4,
    memory_bytes: int = 8 << 30,
    gpus: int = 0,
    labels: frozenset[str] = frozenset(),
) -> Capacity:
    return Capacity(cpus=cpus, memory_bytes=memory_bytes, gpus=gpus, labels=labels)


Factory = Callable[..., Any]
