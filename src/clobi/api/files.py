"""Sandbox routes: input archives up and down, attempts' outputs up, jobs' outputs down.

Bodies stream in both directions in chunks (never whole in memory). Downloads carry
`X-Content-SHA256` so clients check what they received end to end.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from clobi.api.deps import (
    AgentCaller,
    AnyWorking,
    ServerState,
    State,
    User,
    check_acts_for,
    visible_job,
)
from clobi.api.errors import responses
from clobi.api.models import BlobOut, Id, OutputRefOut, Sha256
from clobi.api.streams import body_file, file_chunks
from clobi.errors import Forbidden, NotFound
from clobi.model.auth import Principal
from clobi.model.records import OutputRef
from clobi.sandbox.base import SandboxStore, StoredBlob

router = APIRouter(prefix="/api/v1", tags=["sandboxes"])
MAX_UPLOAD_BYTES = 1 << 40
SHA_HEADER = "X-Content-SHA256"
TAR = "application/x-tar"
_TAR_BODY: dict[int | str, dict[str, Any]] = {
    200: {"content": {TAR: {"schema": {"type": "string", "format": "binary"}}}}
}
_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {TAR: {"schema": {"type": "string", "format": "binary"}}},
    }
}


def check_output_key(attempt_id: int, key: str) -> None:
    """An agent may only report the output key its own upload for that attempt produced, not
    another attempt's. Every engine (local, s3) keys outputs as `outputs/<attempt_id>.tar`."""
    expected = f"outputs/{attempt_id}.tar"
    if key != expected:
        raise Forbidden(f"attempt {attempt_id}: output key {key!r} is not this attempt's")


@router.put(
    "/inputs",
    response_model=BlobOut,
    responses=responses(401, 403, 422, 503),
    openapi_extra=_UPLOAD_BODY,
    max_body_size=MAX_UPLOAD_BYTES,
)
async def put_input(request: Request, principal: User, state: State) -> BlobOut:
    """Upload an input archive (a tar stream, streamed); it is stored once under its sha256.
    Compare the returned sha256 with your own to check the upload end to end."""
    blob = await run_in_threadpool(_put_input, state.sandbox, request)
    return BlobOut.model_validate(blob)


def _put_input(sandbox: SandboxStore, request: Request) -> StoredBlob:
    with body_file(request) as src:
        return sandbox.put_input(src)


@router.head("/inputs/{sha256}", status_code=200, responses=responses(401, 403, 404, 422))
def has_input(sha256: Sha256, principal: AnyWorking, state: State) -> Response:
    """200 when the input archive is stored, 404 when not."""
    if not state.sandbox.has_input(sha256):
        raise NotFound(f"input archive {sha256}: not uploaded")
    return Response(status_code=200)


@router.get(
    "/inputs/{sha256}",
    response_class=StreamingResponse,
    responses={**_TAR_BODY, **responses(401, 403, 404, 422)},
)
def get_input(sha256: Sha256, principal: AgentCaller, state: State) -> StreamingResponse:
    """Download an input archive (agents stage jobs in with it)."""
    src = state.sandbox.open_input(sha256)
    return StreamingResponse(file_chunks(src), media_type=TAR, headers={SHA_HEADER: sha256})


@router.put(
    "/agents/{agent_id}/attempts/{attempt_id}/output",
    response_model=BlobOut,
    responses=responses(401, 403, 422, 503),
    openapi_extra=_UPLOAD_BODY,
    max_body_size=MAX_UPLOAD_BYTES,
)
async def put_output(
    agent_id: Id, attempt_id: Id, request: Request, principal: AgentCaller, state: State
) -> BlobOut:
    """Upload the output archive of one of the agent's running attempts (streamed). Counts
    as a heartbeat of that attempt."""
    check_acts_for(principal, agent_id)
    reply = await run_in_threadpool(
        state.store.heartbeat, agent_id, [attempt_id], state.settings.lease_s
    )
    if attempt_id not in reply.renewed:
        raise Forbidden(f"attempt {attempt_id}: not a running attempt of agent {agent_id}")
    blob = await run_in_threadpool(_put_output, state.sandbox, attempt_id, request)
    return BlobOut.model_validate(blob)


def _put_output(sandbox: SandboxStore, attempt_id: int, request: Request) -> StoredBlob:
    with body_file(request) as src:
        return sandbox.put_output(attempt_id, src)


@router.get(
    "/jobs/{job_id}/output/ref",
    response_model=OutputRefOut,
    responses=responses(401, 403, 404, 422, 503),
)
def output_ref(
    job_id: Id,
    principal: User,
    state: State,
    attempt_id: Annotated[Id | None, Query()] = None,
) -> OutputRefOut:
    """Which attempt's output a download would give (default: the latest with output), its
    size and sha256."""
    ref = _ref(state, principal, job_id, attempt_id)
    return OutputRefOut(
        attempt_id=ref.attempt_id,
        job_id=ref.job_id,
        size=ref.size,
        sha256=ref.sha256,
        inline=ref.inline is not None,
    )


@router.get(
    "/jobs/{job_id}/output",
    response_class=StreamingResponse,
    responses={**_TAR_BODY, **responses(401, 403, 404, 422, 503)},
)
def get_output(
    job_id: Id,
    principal: User,
    state: State,
    attempt_id: Annotated[Id | None, Query()] = None,
) -> Response:
    """Download the output archive (stdout, stderr, declared outputs, attempt.log) of a job's
    latest attempt with output, or of `attempt_id`."""
    ref = _ref(state, principal, job_id, attempt_id)
    headers = {SHA_HEADER: ref.sha256, "X-Clobi-Attempt": str(ref.attempt_id)}
    if ref.inline is not None:
        return Response(ref.inline, media_type=TAR, headers=headers)
    assert ref.key is not None
    src = state.sandbox.open_output(ref.key)
    return StreamingResponse(file_chunks(src), media_type=TAR, headers=headers)


def _ref(
    state: ServerState, principal: Principal, job_id: int, attempt_id: int | None
) -> OutputRef:
    visible_job(state, principal, job_id)
    ref = state.store.output_ref(job_id, attempt_id)
    if ref is None:
        raise NotFound(f"job {job_id}: has no output yet")
    return ref
