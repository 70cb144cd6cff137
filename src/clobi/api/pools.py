"""Pool routes: the session's pools with their instances and cost, and why a job waits.

Pools are declared in the served session's clobi.toml; a server started without a session
directory (`--db` and `--storage` only) has none to show.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from clobi.api.deps import State, User, visible_job
from clobi.api.errors import responses
from clobi.api.models import Id, InstanceOut

router = APIRouter(prefix="/api/v1", tags=["pools"])


class WhyOut(BaseModel):
    job_id: int
    lines: list[str]


class PoolOut(BaseModel):
    name: str
    provider: str
    cpus: float
    memory_bytes: int
    gpus: int
    labels: list[str]
    cost_per_hour: float
    min: int
    max: int
    instances: list[InstanceOut]
    agents: list[int]
    cost: float


def _root(request: Request) -> Path | None:
    root = getattr(request.app.state, "session_root", None)
    return root if isinstance(root, Path) else None


@router.get(
    "/jobs/{job_id}/why", response_model=WhyOut, responses=responses(401, 403, 404, 422, 503)
)
def why(job_id: Id, request: Request, principal: User, state: State) -> WhyOut:
    """Why the job is still queued: the pools that could run it, the agents, and what the
    resource manager last decided about jobs like it."""
    from clobi.manager.control import why_job

    visible_job(state, principal, job_id)
    root = _root(request)
    if root is None:
        return WhyOut(job_id=job_id, lines=["this server has no session directory, so no pools"])
    return WhyOut(job_id=job_id, lines=why_job(root, state.store, job_id, time.time()))


@router.get("/pools", response_model=list[PoolOut], responses=responses(401, 403, 422, 503))
def pools(request: Request, principal: User, state: State) -> list[PoolOut]:
    """The declared pools, each with its live instances, its agents and its cost so far."""
    from clobi.manager.config import read_pools
    from clobi.manager.control import pool_statuses
    from clobi.session import CONFIG_NAME

    root = _root(request)
    if root is None:
        return []
    declared = read_pools(root / CONFIG_NAME).pools
    return [_pool_out(s) for s in pool_statuses(state.store, declared, time.time())]


def _pool_out(status: Any) -> PoolOut:
    p = status.pool
    return PoolOut(
        name=p.name,
        provider=p.provider,
        cpus=p.cpus,
        memory_bytes=p.memory_bytes,
        gpus=p.gpus,
        labels=sorted(p.labels),
        cost_per_hour=p.cost_per_hour,
        min=p.min,
        max=p.max,
        instances=[InstanceOut.model_validate(i) for i in status.instances],
        agents=[a.id for a in status.agents],
        cost=round(status.cost, 6),
    )
