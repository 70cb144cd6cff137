"""Job routes: submit, list, show, counts, kill, remove, retry, events.

The routes clients call most (submit, show) are coroutines that do their blocking work in one
threadpool call; the others are plain functions, which FastAPI runs in the threadpool.

Users see and act on their own jobs only; admins on all. Bulk actions check every id first, so
one unknown (or foreign) id changes nothing and answers 404.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import Field

from clobi.api.deps import ServerState, State, User, visible_job, visible_jobs
from clobi.api.errors import responses
from clobi.api.models import (
    INT64_MAX,
    AttemptOut,
    CountsIn,
    CountsOut,
    EventOut,
    Id,
    IdsIn,
    IdsOut,
    JobOut,
    JobViewOut,
    SubmitIn,
)
from clobi.errors import NotFound, SpecError, UsageError
from clobi.model.auth import Principal
from clobi.model.records import Event, JobFilter, Submission
from clobi.model.specparse import parse_spec
from clobi.model.states import JobState

router = APIRouter(prefix="/api/v1", tags=["jobs"])
PAGE_MAX = 1000
OFFSET_MAX = 10_000  # jumping further walks too many rows: page with the cursor instead
NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL characters
JobSort = Literal["id", "created", "priority", "state", "updated"]
Text = Annotated[str, Field(pattern=NO_NUL)]


def scoped_key(owner: str, key: str | None) -> str | None:
    """An idempotency key made private to its owner: equal keys of two users never meet."""
    if key is None:
        return None
    return hashlib.sha256(json.dumps([owner, key]).encode()).hexdigest()


@router.post("/jobs", response_model=IdsOut, responses=responses(401, 403, 404, 422, 503))
async def submit(body: SubmitIn, principal: User, state: State) -> IdsOut:
    """Submit a job spec; an array gives many jobs. Returns the job ids in array order.

    Inputs are uploaded first (`PUT /api/v1/inputs`) and named by `input_sha256`. With an
    `idempotency_key` this user already used, the first submit's ids come back and nothing is
    created. Every problem of the spec is listed in `problems` (422).
    """
    return await run_in_threadpool(_submit, body, principal, state)


def _submit(body: SubmitIn, principal: Principal, state: ServerState) -> IdsOut:
    spec = parse_spec(body.spec, source="spec")
    sha = body.input_sha256
    if spec.inputs and sha is None:
        raise SpecError(["inputs: upload the input archive first and give its input_sha256"])
    if sha is not None and not state.sandbox.has_input(sha):
        raise NotFound(f"input archive {sha}: not uploaded")
    submission = Submission(
        spec=spec,
        input_sha256=sha,
        owner=principal.name,
        idempotency_key=scoped_key(principal.name, body.idempotency_key),
    )
    return IdsOut(ids=state.store.submit(submission))


@router.get("/jobs", response_model=list[JobOut], responses=responses(401, 403, 422, 503))
def list_jobs(
    *,
    principal: User,
    state: State,
    states: Annotated[list[JobState] | None, Query(alias="state")] = None,
    tags: Annotated[list[Text] | None, Query(alias="tag")] = None,
    ids: Annotated[list[Id] | None, Query(alias="id", max_length=1000)] = None,
    owner: Annotated[str | None, Query(max_length=200, pattern=NO_NUL)] = None,
    text: Annotated[str | None, Query(max_length=200, pattern=NO_NUL)] = None,
    sort: Annotated[JobSort, Query()] = "id",
    desc: Annotated[bool, Query()] = False,
    after_id: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
    after_value: Annotated[str | None, Query(max_length=100, pattern=NO_NUL)] = None,
    offset: Annotated[int, Query(ge=0, le=OFFSET_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 100,
) -> list[JobOut]:
    """Jobs filtered by states (any), tags (all), ids, `owner` and `text` (a substring of the
    name, any case), ordered by `sort` (`created` is the id order; `state` goes by the state's
    name), ties by id, reversed with `desc`. Users see their own jobs only.

    To page, send the last job of the page before: its `id` as `after_id`, and for the sorts
    `priority`, `state` and `updated` its value of that key (`priority`, `state`,
    `updated_at`) as `after_value`; or skip `offset` jobs (at most 10,000: further on, use the
    cursor)."""
    scope = principal.owner_filter()
    if owner is not None and scope is not None and owner != scope:
        return []  # another user's jobs: none the caller may see
    flt = JobFilter(
        states=frozenset(states or ()),
        tags=frozenset(tags or ()),
        ids=tuple(ids or ()),
        owner=scope if scope is not None else owner,
        text=text or None,
        sort=sort,
        descending=desc,
        after_id=after_id,
        after_value=_cursor_value(sort, after_value),
        offset=offset,
        limit=limit,
    )
    return [JobOut.model_validate(j) for j in state.store.list_jobs(flt)]


def _cursor_value(sort: str, text: str | None) -> int | float | str | None:
    """`after_value` as the sort key's type."""
    if text is None or sort not in ("priority", "updated"):
        return text
    try:
        value = int(text) if sort == "priority" else float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or abs(value) > INT64_MAX:
        raise UsageError(f"after_value: not a {sort} value: {text[:40]!r}")
    return value


@router.get(
    "/jobs/{job_id}", response_model=JobViewOut, responses=responses(401, 403, 404, 422, 503)
)
async def show(job_id: Id, principal: User, state: State) -> JobViewOut:
    """One job with its spec, input sandbox and attempts (oldest first)."""
    return await run_in_threadpool(_view, job_id, principal, state)


def _view(job_id: int, principal: Principal, state: ServerState) -> JobViewOut:
    job = visible_job(state, principal, job_id)
    spec, sha = state.store.job_spec(job_id)
    attempts = [AttemptOut.model_validate(a) for a in state.store.attempts(job_id)]
    return JobViewOut(
        job=JobOut.model_validate(job), spec=spec, input_sha256=sha, attempts=attempts
    )


@router.post("/jobs/counts", response_model=CountsOut, responses=responses(401, 403, 422, 503))
def counts(body: CountsIn, principal: User, state: State) -> CountsOut:
    """How many jobs (of `ids`, or all the caller may see) are in each state. Ids the caller
    may not see are not counted."""
    if principal.is_admin:
        return CountsOut(counts=state.store.count_states(body.ids))
    if body.ids == []:
        return CountsOut(counts=dict.fromkeys(JobState, 0))
    flt = JobFilter(ids=tuple(body.ids or ()), owner=principal.name, limit=None)
    found = Counter(j.state for j in state.store.list_jobs(flt))
    return CountsOut(counts={s: found.get(s, 0) for s in JobState})


@router.post("/jobs/kill", response_model=IdsOut, responses=responses(401, 403, 404, 422, 503))
def kill(body: IdsIn, principal: User, state: State) -> IdsOut:
    """Cancel jobs: queued ones at once, running ones at their agent's next heartbeat. Returns
    the ids that were queued or running."""
    visible_jobs(state, principal, body.ids)
    return IdsOut(ids=state.store.kill(body.ids))


@router.post(
    "/jobs/remove", response_model=IdsOut, responses=responses(401, 403, 404, 409, 422, 503)
)
def remove(body: IdsIn, principal: User, state: State) -> IdsOut:
    """Delete queued or finished jobs and their outputs; 409 (and nothing removed) when one is
    running."""
    visible_jobs(state, principal, body.ids)
    refs = [state.store.output_ref(i) for i in body.ids]
    removed = state.store.remove(body.ids)
    for ref in refs:
        if ref is not None and ref.key and ref.job_id in removed:
            state.sandbox.delete_output(ref.key)
    return IdsOut(ids=removed)


@router.post("/jobs/retry", response_model=IdsOut, responses=responses(401, 403, 404, 422, 503))
def retry(body: IdsIn, principal: User, state: State) -> IdsOut:
    """Requeue failed, timed-out or cancelled jobs; returns the ids requeued."""
    visible_jobs(state, principal, body.ids)
    return IdsOut(ids=state.store.retry(body.ids))


@router.get("/events", response_model=list[EventOut], responses=responses(401, 403, 404, 422, 503))
def events(
    principal: User,
    state: State,
    job_id: Annotated[Id | None, Query()] = None,
    after_id: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = PAGE_MAX,
) -> list[EventOut]:
    """Events (of one job, or all the caller may see) with ids above `after_id`, oldest first."""
    if job_id is not None:
        visible_job(state, principal, job_id)
        found = state.store.events(job_id, after_id, limit)
    elif principal.is_admin:
        found = state.store.events(None, after_id, limit)
    else:
        found = _own_events(state, principal, after_id, limit)
    return [EventOut.model_validate(e) for e in found]


def _own_events(state: ServerState, principal: Principal, after_id: int, limit: int) -> list[Event]:
    """The next page of events about the caller's jobs (skipping pages with none)."""
    while page := state.store.events(None, after_id, limit):
        ids = {e.job_id for e in page if e.job_id is not None}
        flt = JobFilter(ids=tuple(ids), owner=principal.name, limit=None)
        own = {j.id for j in state.store.list_jobs(flt)} if ids else set()
        kept = [e for e in page if e.job_id in own]
        if kept:
            return kept
        after_id = page[-1].id
    return []
