"""The JSON the dashboard's pages show and the actions they take, for a session cookie.

Wherever the API has a route for the same thing, its function is called with the session's
principal, so the dashboard sees and may do exactly what the session's token may through the
API (users their own jobs, admins everything). Actions need the session's CSRF token
(`UiWriter`); pool and agent actions need an admin (`UiAdmin`).
"""

from __future__ import annotations

import base64
import io
import time
from collections import Counter, defaultdict
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from clobi.api import agents as agent_routes
from clobi.api import files, jobs, logs, pools
from clobi.api import series as series_routes
from clobi.api.deps import ServerState, State, visible_job
from clobi.api.models import (
    AgentOut,
    AttemptOut,
    CountsIn,
    DrainIn,
    EventOut,
    Id,
    IdsIn,
    JobOut,
    JobViewOut,
    LogStream,
    Size,
)
from clobi.api.ui_auth import UiAdmin, UiReader, UiSession, UiWriter
from clobi.api.ui_events import EventHub
from clobi.errors import NotFound, UsageError
from clobi.model.instances import InstanceRecord
from clobi.model.records import KEYED_SORTS, Event, JobFilter
from clobi.model.states import JobState

router = APIRouter(prefix="/ui/api", include_in_schema=False)
PAGE_MAX = 200
RECENT_EVENTS = 50
FINAL_LOG_BYTES = 1 << 20
CHART_PRIORITIES = 8


def _hub(request: Request) -> EventHub:
    hub = request.app.state.clobi_ui.hub
    assert isinstance(hub, EventHub)
    return hub


def _events(found: list[Event]) -> list[dict[str, Any]]:
    return [EventOut.model_validate(e).model_dump(mode="json") for e in found]


# --- overview ---------------------------------------------------------------------------------
@router.get("/overview")
async def overview(request: Request, session: UiReader, state: State) -> dict[str, Any]:
    """Jobs by state, agents and instances per pool, and the newest events."""
    hub = _hub(request)
    await hub.started()
    body = await run_in_threadpool(_overview, session, state)
    body["events"] = _events(hub.recent(session.principal, RECENT_EVENTS))
    return body


def _overview(session: UiSession, state: ServerState) -> dict[str, Any]:
    counts = jobs.counts(CountsIn(ids=None), session.principal, state).counts
    per_pool: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"agents": 0, "busy": 0, "cpus": 0.0, "running": 0, "instances": Counter()}
    )
    for a in state.store.list_agents():
        row = per_pool[a.pool]
        row["agents"] += 1
        row["busy"] += int(a.running > 0)
        row["cpus"] += a.cpus
        row["running"] += a.running
    for i in state.store.list_instances():
        per_pool[i.pool]["instances"][str(i.state)] += 1
    return {
        "counts": {str(s): n for s, n in counts.items()},
        "pools": [{"pool": name, **row} for name, row in sorted(per_pool.items())],
        "now": time.time(),
    }


@router.get("/counts")
def counts(session: UiReader, state: State) -> dict[str, int]:
    """Jobs (that the session may see) by state."""
    found = jobs.counts(CountsIn(ids=None), session.principal, state).counts
    return {str(s): n for s, n in found.items()}


@router.get("/events")
async def recent_events(
    request: Request, session: UiReader, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[dict[str, Any]]:
    """The newest events the session may see, newest first."""
    hub = _hub(request)
    await hub.started()
    return _events(hub.recent(session.principal, limit))


@router.get("/series")
def series(
    session: UiReader,
    state: State,
    window_s: Annotated[int, Query(ge=60, le=30 * 86_400)] = 3600,
) -> dict[str, Any]:
    """The overview's charts over the last `window_s` seconds, as {label: [[ts, value], ...]}
    (from `GET /api/v1/series`): claimable queued jobs by priority, and throughput."""
    until = time.time()
    since = until - window_s
    wanted = {f"priority {p}": f"queued.p{p}" for p in _priorities(state)}
    wanted["finished per s"] = "throughput"
    found = series_routes.series(
        principal=session.principal,
        state=state,
        metrics=list(wanted.values()),
        since=since,
        until=until,
    )
    points = {label: [list(p) for p in found.get(metric, [])] for label, metric in wanted.items()}
    throughput = points.pop("finished per s")
    return {"since": since, "until": until, "queue": points, "throughput": {"jobs": throughput}}


def _priorities(state: ServerState) -> list[int]:
    """The priorities jobs have (at most `CHART_PRIORITIES`, highest first): one indexed
    look-up per priority, each skipping to the next lower one with a keyset cursor."""
    found: list[int] = []
    after: int | None = None
    while len(found) < CHART_PRIORITIES:
        flt = JobFilter(
            sort="priority",
            descending=True,
            limit=1,
            after_id=0 if after is None else 1,
            after_value=after,
        )
        page = state.store.list_jobs(flt)
        if not page:
            break
        after = page[0].priority
        found.append(after)
    return found


# --- jobs -------------------------------------------------------------------------------------
@router.get("/jobs")
def list_jobs(
    *,
    session: UiReader,
    state: State,
    states: Annotated[list[JobState] | None, Query(alias="state")] = None,
    tags: Annotated[list[str] | None, Query(alias="tag")] = None,
    ids: Annotated[list[Id] | None, Query(alias="id", max_length=PAGE_MAX)] = None,
    user: Annotated[str | None, Query(max_length=256)] = None,
    text: Annotated[str | None, Query(max_length=256)] = None,
    sort: Annotated[str, Query(max_length=16)] = "id",
    desc: bool = True,
    after_id: Annotated[int, Query(ge=0)] = 0,
    after_value: Annotated[str | None, Query(max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 50,
) -> dict[str, Any]:
    """A page of jobs; `next` is the cursor of the page after it (None at the end). Users
    see their own jobs whatever `user` says; admins everyone's, or `user`'s."""
    principal = session.principal
    owner = principal.owner_filter() or (user or None)
    flt = JobFilter(
        states=frozenset(states or ()),
        tags=frozenset(t for t in (tags or ()) if t),
        ids=tuple(ids or ()),
        owner=owner,
        after_id=after_id,
        after_value=_cursor_value(sort, after_value),
        limit=limit + 1,
        text=text or None,
        sort=sort,
        descending=desc,
    )
    found = state.store.list_jobs(flt)
    page, more = found[:limit], len(found) > limit
    rows = [JobOut.model_validate(j).model_dump(mode="json") for j in page]
    cursor = None
    if more and page:
        value = flt.sort_key(page[-1])[0] if sort in KEYED_SORTS else None
        cursor = {"after_id": page[-1].id, "after_value": None if value is None else str(value)}
    return {"jobs": rows, "next": cursor}


def _cursor_value(sort: str, text: str | None) -> int | float | str | None:
    """The sort key's value a keyset cursor carries, back from its text in the query."""
    if text is None or sort not in KEYED_SORTS:
        return None
    try:
        if sort == "priority":
            return int(text)
        return float(text) if sort == "updated" else text
    except ValueError:
        raise UsageError(f"after_value: not a value of {sort}: {text!r}") from None


@router.get("/jobs/{job_id}")
def job(job_id: Id, session: UiReader, state: State) -> dict[str, Any]:
    """One job, its spec, attempts, and the output a download would give."""
    record = visible_job(state, session.principal, job_id)
    spec, sha = state.store.job_spec(job_id)
    view = JobViewOut(
        job=JobOut.model_validate(record),
        spec=spec,
        input_sha256=sha,
        attempts=[AttemptOut.model_validate(a) for a in state.store.attempts(job_id)],
    )
    ref = state.store.output_ref(job_id)
    output = None if ref is None else {"attempt_id": ref.attempt_id, "size": ref.size}
    return {**view.model_dump(mode="json"), "output": output}


@router.get("/jobs/{job_id}/log")
def job_log(
    job_id: Id,
    session: UiReader,
    state: State,
    stream: Annotated[LogStream, Query()] = "stdout",
    offset: Annotated[Size, Query()] = 0,
) -> dict[str, Any] | None:
    """The running job's log from `offset` (base64, as `GET /api/v1/jobs/{id}/log`)."""
    tail = logs.read_log(job_id, session.principal, state, stream, offset)
    return None if tail is None else tail.model_dump()


@router.get("/jobs/{job_id}/final-log")
def final_log(
    job_id: Id,
    session: UiReader,
    state: State,
    stream: Annotated[LogStream, Query()] = "stdout",
) -> dict[str, Any] | None:
    """The start (at most `FINAL_LOG_BYTES`) of a finished job's log, from its output
    archive (base64); None when it has no output."""
    from clobi.sandbox import archive

    visible_job(state, session.principal, job_id)
    ref = state.store.output_ref(job_id)
    if ref is None:
        return None
    if ref.inline is not None:
        src: BinaryIO = io.BytesIO(ref.inline)
    else:
        assert ref.key is not None
        src = state.sandbox.open_output(ref.key)
    with src:
        data = archive.read_member(src, stream, FINAL_LOG_BYTES + 1) or b""
    return {
        "attempt_id": ref.attempt_id,
        "data": base64.b64encode(data[:FINAL_LOG_BYTES]).decode(),
        "truncated": len(data) > FINAL_LOG_BYTES,
    }


@router.get("/jobs/{job_id}/output")
def output(job_id: Id, session: UiReader, state: State) -> Response:
    """Download the job's output archive."""
    response = files.get_output(job_id, session.principal, state, None)
    response.headers["Content-Disposition"] = f'attachment; filename="job-{job_id}-output.tar"'
    return response


@router.post("/jobs/kill")
def kill(body: IdsIn, session: UiWriter, state: State) -> dict[str, list[int]]:
    """Cancel jobs (as `POST /api/v1/jobs/kill`)."""
    return {"ids": jobs.kill(body, session.principal, state).ids}


@router.post("/jobs/retry")
def retry(body: IdsIn, session: UiWriter, state: State) -> dict[str, list[int]]:
    """Requeue failed, timed-out or cancelled jobs (as `POST /api/v1/jobs/retry`)."""
    return {"ids": jobs.retry(body, session.principal, state).ids}


# --- agents and pools -------------------------------------------------------------------------
@router.get("/agents")
def list_agents(session: UiReader, state: State, include_gone: bool = False) -> list[Any]:
    found = agent_routes.list_agents(session.principal, state, include_gone)
    return [AgentOut.model_validate(a).model_dump(mode="json") for a in found]


@router.post("/agents/{agent_id}/drain")
def drain_agent(agent_id: Id, body: DrainIn, session: UiAdmin, state: State) -> dict[str, bool]:
    """Ask an agent to drain, or to stop draining (admins)."""
    if agent_id not in {a.id for a in state.store.list_agents()}:
        raise NotFound(f"agent {agent_id}: no such live agent")
    agent_routes.drain(agent_id, body, session.principal, state)
    return {"drain": body.drain}


class InstancesIn(BaseModel):
    instances: list[Id] = Field(default_factory=list, max_length=10_000)


@router.get("/pools")
async def list_pools(request: Request, session: UiReader, state: State) -> dict[str, Any]:
    """The declared pools with their instances and agents, and (for admins) the resource
    manager's recent decisions."""
    found = await run_in_threadpool(pools.pools, request, session.principal, state)
    decisions: list[Event] = []
    if session.principal.is_admin:
        hub = _hub(request)
        await hub.started()
        decisions = hub.decisions(100)
    return {
        "pools": [p.model_dump(mode="json") for p in found],
        "decisions": _events(decisions),
        "admin": session.principal.is_admin,
    }


@router.post("/pools/{pool}/drain")
def drain_pool(
    pool: str, body: InstancesIn, request: Request, session: UiAdmin, state: State
) -> dict[str, list[int]]:
    """Drain instances of a pool (all of them, after scaling it to 0, when none is named)."""
    from clobi.manager import control

    chosen = _chosen(request, state, pool, body.instances)
    return {"instances": control.drain(state.store, chosen, "drained from the dashboard")}


@router.post("/pools/{pool}/kill")
def kill_pool(
    pool: str, body: InstancesIn, request: Request, session: UiAdmin, state: State
) -> dict[str, list[int]]:
    """Hard-kill instances of a pool (all, after scaling it to 0, when none is named); their
    running jobs are requeued now."""
    from clobi.manager import control

    chosen = _chosen(request, state, pool, body.instances)
    lost_cap = state.settings.lost_cap
    why = "killed from the dashboard"
    return {"requeued": control.hard_kill(state.store, chosen, why, lost_cap)}


def _chosen(
    request: Request, state: ServerState, pool: str, ids: list[int]
) -> list[InstanceRecord]:
    from clobi.manager import control
    from clobi.manager.config import change_pool, read_pools, scale
    from clobi.session import CONFIG_NAME

    root = getattr(request.app.state, "session_root", None)
    if root is None:
        raise NotFound("this server has no session directory, so no pools")
    config = root / CONFIG_NAME
    read_pools(config).pool(pool)  # NotFound unless declared
    if not ids:
        change_pool(config, pool, lambda p: scale(p, 0, 0))
    return control.pick_instances(state.store, pool, ids)
