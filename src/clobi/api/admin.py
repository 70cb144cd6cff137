"""Health, readiness, session info and access tokens.

`/health` and `/ready` need no token: load balancers and orchestrators probe them. They say
nothing but whether the process is up and the store answers.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from clobi import __version__
from clobi.api.deps import Admin, Caller, State
from clobi.api.errors import error_response, responses
from clobi.api.models import (
    Health,
    PrincipalOut,
    RevokedOut,
    SessionOut,
    SettingsOut,
    TokenIn,
    TokenOut,
)
from clobi.errors import ClobiError
from clobi.model.auth import TokenRecord
from clobi.model.records import JobFilter

probes = APIRouter(tags=["server"])
router = APIRouter(prefix="/api/v1", tags=["server"])


@probes.get("/health", response_model=Health)
def health() -> Health:
    """The server process is up (no token needed)."""
    return Health()


@probes.get("/ready", response_model=Health, responses=responses(503))
async def ready(state: State) -> Health | JSONResponse:
    """The server can reach its store (no token needed)."""
    try:
        await run_in_threadpool(state.store.list_jobs, JobFilter(limit=1))
    except ClobiError as exc:
        return error_response(503, "StoreUnavailable", exc.message, [])
    return Health()


@router.get("/session", response_model=SessionOut, responses=responses(401, 503))
def session(principal: Caller, state: State) -> SessionOut:
    """The session's settings (agents follow them) and who the token belongs to. Any valid
    token may read this, bootstrap tokens included."""
    return SessionOut(
        version=__version__,
        settings=SettingsOut.model_validate(state.settings),
        principal=PrincipalOut.model_validate(principal),
    )


@router.post(
    "/tokens",
    status_code=201,
    response_model=TokenOut,
    responses=responses(401, 403, 409, 422, 503),
)
def create_token(body: TokenIn, principal: Admin, state: State) -> TokenOut:
    """Store a token made by the client: its id, role, scope and the sha256 of its secret (the
    secret itself never travels). A token id already stored is a conflict (the store
    refuses it, even when two requests race)."""
    record = TokenRecord(
        id=body.id,
        role=body.role,
        name=body.name,
        pool=body.pool,
        created_at=body.created_at,
        expires_at=body.expires_at,
    )
    state.store.create_token(record, body.secret_sha256)
    return TokenOut.model_validate(record)


@router.get("/tokens", response_model=list[TokenOut], responses=responses(401, 403, 503))
def list_tokens(principal: Admin, state: State) -> list[TokenOut]:
    """Every token, oldest first (never secrets)."""
    return [TokenOut.model_validate(t) for t in state.store.list_tokens()]


@router.delete(
    "/tokens/{token_id}", response_model=RevokedOut, responses=responses(401, 403, 422, 503)
)
def revoke_token(token_id: str, principal: Admin, state: State) -> RevokedOut:
    """Revoke a token; `revoked` is false when it was unknown or already revoked. This server
    refuses it at once; other servers of the session within their 2 s token cache."""
    revoked = state.store.revoke_token(token_id)
    state.tokens.forget(token_id)
    return RevokedOut(revoked=revoked)
