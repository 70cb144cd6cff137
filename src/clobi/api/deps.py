"""What routes depend on: the server's state, the caller (from the bearer token), and the checks
of who may do what.

Authorization rules, in one place:
- `admin` tokens may do everything;
- `user` tokens submit, and see and act on their own jobs only: another user's job is reported
  as not found, so that ids do not reveal other users' work;
- `agent` tokens act only for the agent registered with them (named `agent-<id>`, in the pool
  of the bootstrap token they were exchanged for);
- `bootstrap` tokens only join (and read the session's settings to do so).

The dependencies here are coroutines: they run on the event loop, never in the threadpool.
A token is checked against the store (in a worker thread) only when the server's
`TokenCache` has not found it usable within the last `clobi.auth.AUTH_CACHE_S` seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from clobi.api.wakeups import Doorbell
from clobi.auth import TokenCache
from clobi.errors import Forbidden, NotFound, Unauthorized
from clobi.model.auth import Principal, Role
from clobi.model.records import JobFilter, JobRecord
from clobi.sandbox.base import SandboxStore
from clobi.session import Settings
from clobi.store.base import Store

_AGENT_PREFIX = "agent-"


@dataclass
class ServerState:
    """Everything a request needs, created by the app factory (no module-level state)."""

    store: Store
    sandbox: SandboxStore
    settings: Settings
    doorbell: Doorbell
    tokens: TokenCache


async def server_state(request: Request) -> ServerState:
    state = request.app.state.clobi
    assert isinstance(state, ServerState)
    return state


State = Annotated[ServerState, Depends(server_state)]

_bearer = HTTPBearer(
    auto_error=False, description="A Clobi token (`clobi_<id>_<secret>`) as a bearer token"
)


async def caller(
    state: State,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The principal of the request's bearer token; `Unauthorized` without a usable one."""
    if credentials is None:
        raise Unauthorized("missing token: send `Authorization: Bearer <token>`")
    text = credentials.credentials
    found = state.tokens.cached(text)
    if found is not None:
        return found
    return await run_in_threadpool(state.tokens.authenticate, text)


Caller = Annotated[Principal, Depends(caller)]


async def _user(principal: Caller) -> Principal:
    if not principal.may_submit():
        raise Forbidden(f"{principal.role} tokens cannot work with jobs")
    return principal


async def _admin(principal: Caller) -> Principal:
    if not principal.is_admin:
        raise Forbidden("only admin tokens may do this")
    return principal


async def _agent(principal: Caller) -> Principal:
    if principal.role not in (Role.AGENT, Role.ADMIN):
        raise Forbidden(f"{principal.role} tokens cannot act as agents")
    return principal


async def _working(principal: Caller) -> Principal:
    if principal.role is Role.BOOTSTRAP:
        raise Forbidden("bootstrap tokens can only join")
    return principal


User = Annotated[Principal, Depends(_user)]
Admin = Annotated[Principal, Depends(_admin)]
AgentCaller = Annotated[Principal, Depends(_agent)]
AnyWorking = Annotated[Principal, Depends(_working)]


def agent_token_name(agent_id: int) -> str:
    """The name of the agent token bound to agent `agent_id`."""
    return f"{_AGENT_PREFIX}{agent_id}"


def check_acts_for(principal: Principal, agent_id: int) -> None:
    """Admins act for any agent, agent tokens only for their own."""
    if principal.is_admin:
        return
    if principal.role is Role.AGENT and principal.name == agent_token_name(agent_id):
        return
    raise Forbidden(f"this token may not act for agent {agent_id}")


def visible_job(state: ServerState, principal: Principal, job_id: int) -> JobRecord:
    """A job the caller may see; another user's job is `NotFound` like a missing one."""
    job = state.store.get_job(job_id)
    if not principal.may_see_job_of(job.owner):
        raise NotFound(f"job {job_id}: no such job")
    return job


def visible_jobs(state: ServerState, principal: Principal, ids: list[int]) -> list[JobRecord]:
    """The jobs `ids`, all of which must exist and be the caller's (else `NotFound`, naming
    them) so that a bulk action changes nothing when one id is wrong."""
    wanted = list(dict.fromkeys(ids))
    flt = JobFilter(ids=tuple(wanted), owner=principal.owner_filter(), limit=None)
    found = state.store.list_jobs(flt) if wanted else []
    missing = sorted(set(wanted) - {j.id for j in found})
    if missing:
        shown = ", ".join(str(i) for i in missing[:20])
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise NotFound(f"no such job: {shown}{more}")
    return found
