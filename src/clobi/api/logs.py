"""Live log routes: agents push the newest bytes of their running jobs' stdout and stderr;
users read them from an offset on, which is how `clobi logs -f` follows a job that runs on
another machine. A finished job's log is in its output (`GET /jobs/{id}/output`).
"""

from __future__ import annotations

import base64
from typing import Annotated

from fastapi import APIRouter, Query

from clobi.api.deps import AgentCaller, State, User, check_acts_for, visible_job
from clobi.api.errors import responses
from clobi.api.models import Id, LogsIn, LogStream, LogTailOut, Size
from clobi.store.base import LogTail

router = APIRouter(prefix="/api/v1", tags=["logs"])


@router.post("/agents/{agent_id}/logs", status_code=204, responses=responses(401, 403, 422, 503))
def push_logs(agent_id: Id, body: LogsIn, principal: AgentCaller, state: State) -> None:
    """Keep what the agent's running attempts wrote since its last push (each tail from its
    offset in the stream). Tails of attempts that are not the agent's running ones are
    ignored."""
    check_acts_for(principal, agent_id)
    tails = [LogTail(t.attempt_id, t.stream, t.offset, t.data) for t in body.tails]
    state.store.push_logs(agent_id, tails)


@router.get(
    "/jobs/{job_id}/log",
    response_model=LogTailOut | None,
    responses=responses(401, 403, 404, 422, 503),
)
def read_log(
    job_id: Id,
    principal: User,
    state: State,
    stream: Annotated[LogStream, Query()] = "stdout",
    offset: Annotated[Size, Query()] = 0,
) -> LogTailOut | None:
    """The running job's `stream` from byte `offset` on, as far as the server keeps it (the
    newest MiB; `offset` in the answer says where `data` starts). `null` when nothing is kept:
    the job has not written yet, or it has finished and its log is in its output."""
    visible_job(state, principal, job_id)
    tail = state.store.read_log(job_id, stream, offset)
    if tail is None:
        return None
    return LogTailOut(
        attempt_id=tail.attempt_id,
        stream=stream,
        offset=tail.offset,
        data=base64.b64encode(tail.data).decode(),
    )
