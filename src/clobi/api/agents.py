"""Agent routes: join, claim (long-poll), wait for work, heartbeat, finish, drain, exit, list.

An agent joins with a single-use bootstrap token and gets an agent token bound to the agent it
registered (`agent-<id>`, in the bootstrap's pool); from then on it may act only for that agent.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from clobi.api.deps import (
    Admin,
    AgentCaller,
    Caller,
    ServerState,
    State,
    User,
    agent_token_name,
    check_acts_for,
)
from clobi.api.errors import responses
from clobi.api.files import check_output_key
from clobi.api.models import (
    AgentOut,
    CapacityIn,
    ClaimIn,
    ClaimOut,
    ClaimsOut,
    DrainIn,
    FinishIn,
    FinishOut,
    HeartbeatIn,
    HeartbeatOut,
    Id,
    InstanceOut,
    JoinIn,
    JoinOut,
    OutcomeIn,
    WaitOut,
)
from clobi.auth import issue
from clobi.errors import Forbidden, Unauthorized
from clobi.model.auth import Principal, Role, instance_of_token
from clobi.model.records import AgentInfo, Capacity, Claim, Outcome
from clobi.store.base import ClaimRequest

router = APIRouter(prefix="/api/v1", tags=["agents"])
DEFAULT_POOL = "default"
WAIT_MAX_S = 25.0
# A long-poll re-checks this often even without a wake-up: jobs waiting out a retry backoff
# become claimable without anyone ringing.
RECHECK_S = 5.0
AGENT_ERRORS = responses(401, 403, 422, 503)


@router.get("/instances", response_model=list[InstanceOut], responses=responses(401, 403, 422, 503))
def list_instances(
    principal: User, state: State, pool: str | None = None, include_ended: bool = False
) -> list[InstanceOut]:
    """The resource manager's instances (of one pool), live ones only unless `include_ended`."""
    found = state.store.list_instances(pool, include_ended)
    return [InstanceOut.model_validate(i) for i in found]


@router.get("/agents", response_model=list[AgentOut], responses=responses(401, 403, 422, 503))
def list_agents(principal: User, state: State, include_gone: bool = False) -> list[AgentOut]:
    """Agents, live ones only unless `include_gone`."""
    return [AgentOut.model_validate(a) for a in state.store.list_agents(include_gone)]


@router.post("/agents/join", response_model=JoinOut, responses=responses(401, 403, 422, 503))
def join(body: JoinIn, principal: Caller, state: State) -> JoinOut:
    """Register an agent and return its agent token (shown once).

    With a bootstrap token, the token is spent (it works exactly once) and the agent joins the
    bootstrap's pool; admins may name the pool.
    """
    pool = _join_pool(principal, body, state)
    info = AgentInfo(
        name=body.name,
        host=body.host,
        cpus=body.cpus,
        memory_bytes=body.memory_bytes,
        gpus=body.gpus,
        labels=frozenset(body.labels),
        pool=pool,
        pid=body.pid,
        instance_id=instance_of_token(principal.name) if principal.role is Role.BOOTSTRAP else None,
    )
    agent_id = state.store.register_agent(info)
    token = issue(state.store, Role.AGENT, agent_token_name(agent_id), pool)
    return JoinOut(agent_id=agent_id, pool=pool, token=token)


def _join_pool(principal: Principal, body: JoinIn, state: ServerState) -> str:
    if principal.is_admin:
        return body.pool or DEFAULT_POOL
    if principal.role is not Role.BOOTSTRAP:
        raise Forbidden("only bootstrap (and admin) tokens can join agents")
    if not state.store.use_bootstrap(principal.token_id):
        raise Unauthorized("the bootstrap token was already used")
    return principal.pool or DEFAULT_POOL


@router.post("/agents/{agent_id}/claim", response_model=ClaimsOut, responses=AGENT_ERRORS)
async def claim(
    agent_id: Id, body: ClaimIn, request: Request, principal: AgentCaller, state: State
) -> ClaimsOut:
    """Claim up to `limit` queued jobs that fit `capacity`, leased for `lease_s`.

    With `wait_s`, waits (long-poll) until some job could be claimed or the time is up.
    """
    check_acts_for(principal, agent_id)
    wanted = _claim_request(agent_id, body)
    deadline = time.monotonic() + body.wait_s
    while True:
        ticket = state.doorbell.ticket()
        claims = await run_in_threadpool(state.store.claim, wanted)
        state.doorbell.claimed(agent_id, wanted.limit, len(claims))
        left = deadline - time.monotonic()
        if claims or left <= 0 or wanted.limit == 0:
            return ClaimsOut(claims=_claims_out(claims))
        gone = request.is_disconnected
        await state.doorbell.wait(ticket, agent_id, min(left, RECHECK_S), gone)
        if state.doorbell.stopping or await request.is_disconnected():
            return ClaimsOut(claims=[])  # claim nothing for a client that is not listening


@router.post("/agents/{agent_id}/wait", response_model=WaitOut, responses=AGENT_ERRORS)
async def wait(
    agent_id: Id,
    request: Request,
    principal: AgentCaller,
    state: State,
    wait_s: Annotated[float, Query(ge=0, le=WAIT_MAX_S)] = WAIT_MAX_S,
) -> WaitOut:
    """Wait (long-poll) until work may have appeared, or `wait_s` passed. Costs the waiting
    agent nothing; it claims when this returns `rang`. New work wakes waiting agents one at a
    time (see `clobi.api.wakeups`)."""
    check_acts_for(principal, agent_id)
    doorbell = state.doorbell
    rang = await doorbell.wait(doorbell.ticket(), agent_id, wait_s, request.is_disconnected)
    return WaitOut(rang=rang)


@router.post("/agents/{agent_id}/heartbeat", response_model=HeartbeatOut, responses=AGENT_ERRORS)
async def heartbeat(
    agent_id: Id, body: HeartbeatIn, principal: AgentCaller, state: State
) -> HeartbeatOut:
    """Renew the agent's liveness and its running attempts' leases. Attempts sent but not in
    `renewed` are no longer the agent's: it must stop them. `cancel`: attempts the user
    killed. `drain`: stop claiming, finish, exit."""
    check_acts_for(principal, agent_id)
    reply = await run_in_threadpool(state.store.heartbeat, agent_id, body.attempt_ids, body.lease_s)
    return HeartbeatOut(
        renewed=sorted(reply.renewed),
        cancel=sorted(reply.cancel),
        drain=reply.drain,
        lease_until=reply.lease_until,
    )


@router.post("/agents/{agent_id}/finish", response_model=FinishOut, responses=AGENT_ERRORS)
async def finish(agent_id: Id, body: FinishIn, principal: AgentCaller, state: State) -> FinishOut:
    """Report how attempts ended (outputs already uploaded, or inline as base64) and
    optionally claim more in the same transaction. `refused`: stale reports."""
    check_acts_for(principal, agent_id)
    outcomes = [_outcome(o) for o in body.outcomes]
    then = None if body.then is None else _claim_request(agent_id, body.then)
    refused, claims = await run_in_threadpool(state.store.finish, agent_id, outcomes, then)
    if then is not None:
        state.doorbell.claimed(agent_id, then.limit, len(claims))
    return FinishOut(refused=refused, claims=_claims_out(claims))


@router.post("/agents/{agent_id}/drain", status_code=204, responses=AGENT_ERRORS)
def drain(agent_id: Id, body: DrainIn, principal: Admin, state: State) -> None:
    """Ask an agent to drain (stop claiming, finish its jobs, exit), or to stop draining."""
    state.store.set_drain(agent_id, body.drain)


@router.post("/agents/{agent_id}/exit", status_code=204, responses=AGENT_ERRORS)
def agent_exit(agent_id: Id, principal: AgentCaller, state: State) -> None:
    """The agent is leaving; its agent token is revoked with it."""
    check_acts_for(principal, agent_id)
    state.store.agent_exited(agent_id)
    if principal.role is Role.AGENT:
        state.store.revoke_token(principal.token_id)
        state.tokens.forget(principal.token_id)


def _claim_request(agent_id: int, body: ClaimIn) -> ClaimRequest:
    per_job = None if body.per_job is None else _capacity(body.per_job)
    return ClaimRequest(
        agent_id, _capacity(body.capacity), body.limit, body.lease_s, body.workdir_root, per_job
    )


def _capacity(cap: CapacityIn) -> Capacity:
    return Capacity(cap.cpus, cap.memory_bytes, cap.gpus, frozenset(cap.labels))


def _claims_out(claims: list[Claim]) -> list[ClaimOut]:
    return [ClaimOut.model_validate(c) for c in claims]


def _outcome(o: OutcomeIn) -> Outcome:
    if o.output_key is not None:
        check_output_key(o.attempt_id, o.output_key)
    return Outcome(
        attempt_id=o.attempt_id,
        state=o.state,
        exit_code=o.exit_code,
        reason=o.reason,
        user_error=o.user_error,
        output_key=o.output_key,
        output_inline=o.output_inline,
        output_size=o.output_size,
        output_sha256=o.output_sha256,
    )
