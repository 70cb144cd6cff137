"""Every route of the API × every way of being denied: no token, a bad or malformed one, an
expired or revoked one (of the role that would otherwise succeed), a user on another user's
job, an agent on another pool's agent, and tokens of the wrong role. Each is refused with the
designed status, and nothing changes in the store or the sandbox."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clobi.api.deps import agent_token_name
from clobi.auth import issue, token_id_of
from clobi.model.auth import Role
from clobi.model.records import JobFilter
from tests.integration.test_api_routes import Api, api, claim_body, join, submit, tar_of

__all__ = ["api"]  # the fixture, shared with the route tests


@dataclass(frozen=True, eq=False)  # hashed by identity: bodies are dicts
class Route:
    method: str
    path: str  # {job} {agent} {attempt} {sha} {token} are filled in from the world
    kind: str  # who may use it: any, user, user-job, admin, agent, upload, join, input
    body: Any = None


ROUTES = (
    Route("GET", "/api/v1/session", "any"),
    Route("GET", "/api/v1/tokens", "admin"),
    Route(
        "POST",
        "/api/v1/tokens",
        "admin",
        {"id": "00112233aabbccdd", "role": "admin", "name": "mallory", "secret_sha256": "0" * 64},
    ),
    Route("DELETE", "/api/v1/tokens/{token}", "admin"),
    Route("POST", "/api/v1/jobs", "user", {"spec": {"command": ["true"]}}),
    Route("GET", "/api/v1/jobs", "user"),
    Route("GET", "/api/v1/jobs/{job}", "user-job"),
    Route("POST", "/api/v1/jobs/counts", "user", {"ids": None}),
    Route("POST", "/api/v1/jobs/kill", "user-job", {"ids": ["{job}"]}),
    Route("POST", "/api/v1/jobs/remove", "user-job", {"ids": ["{job}"]}),
    Route("POST", "/api/v1/jobs/retry", "user-job", {"ids": ["{job}"]}),
    Route("GET", "/api/v1/events?job_id={job}", "user-job"),
    Route("GET", "/api/v1/jobs/{job}/output/ref", "user-job"),
    Route("GET", "/api/v1/jobs/{job}/output", "user-job"),
    Route("PUT", "/api/v1/inputs", "user", b"not yet stored"),
    Route("HEAD", "/api/v1/inputs/{sha}", "input"),
    Route("GET", "/api/v1/inputs/{sha}", "input"),
    Route("PUT", "/api/v1/agents/{agent}/attempts/{attempt}/output", "upload", b"forged"),
    Route("GET", "/api/v1/agents", "user"),
    Route("GET", "/api/v1/instances", "user"),
    Route("GET", "/api/v1/pools", "user"),
    Route("GET", "/api/v1/jobs/{job}/why", "user-job"),
    Route(
        "POST",
        "/api/v1/agents/join",
        "join",
        {"name": "intruder", "host": "h", "cpus": 64, "memory_bytes": 1 << 40},
    ),
    Route("POST", "/api/v1/agents/{agent}/claim", "agent", claim_body(limit=10)),
    Route("POST", "/api/v1/agents/{agent}/wait?wait_s=0", "agent"),
    Route("POST", "/api/v1/agents/{agent}/heartbeat", "agent", {"attempt_ids": [], "lease_s": 999}),
    Route(
        "POST",
        "/api/v1/agents/{agent}/finish",
        "agent",
        {"outcomes": [{"attempt_id": "{attempt}", "state": "failed", "exit_code": 1}]},
    ),
    Route(
        "POST",
        "/api/v1/agents/{agent}/logs",
        "agent",
        {"tails": [{"attempt_id": "{attempt}", "stream": "stdout", "offset": 0, "data": "eA=="}]},
    ),
    Route("GET", "/api/v1/jobs/{job}/log?stream=stdout", "user-job"),
    Route("POST", "/api/v1/agents/{agent}/drain", "admin", {"drain": True}),
    Route("POST", "/api/v1/agents/{agent}/exit", "agent"),
    Route("GET", "/api/v1/series?metric=jobs.queued", "user"),
)


@dataclass
class World:
    """Bob's queued job and running job (on agent 2 of pool p2), agent 1 of pool p1, a stored
    input, and a token to revoke."""

    api: Api
    job: int
    agent: int
    attempt: int
    sha: str
    token: str
    agent1_token: str
    agent2_token: str

    def fill(self, text: str) -> str:
        return text.format(
            job=self.job, agent=self.agent, attempt=self.attempt, sha=self.sha, token=self.token
        )

    def call(self, route: Route, token: str | None) -> Any:
        body = route.body
        kwargs: dict[str, Any] = {}
        if isinstance(body, bytes):
            kwargs["content"] = body
        elif body is not None:
            kwargs["json"] = _fill_json(body, self)
        return self.api.http(token).request(route.method, self.fill(route.path), **kwargs)


def _fill_json(value: Any, world: World) -> Any:
    if isinstance(value, dict):
        return {k: _fill_json(v, world) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill_json(v, world) for v in value]
    if isinstance(value, str) and value.startswith("{"):
        return int(world.fill(value))
    return value


@pytest.fixture
def world(api: Api) -> World:
    bob = api.token(Role.USER, "bob")
    data = tar_of({"x.txt": b"input"})
    sha = api.http(bob).put("/api/v1/inputs", content=data).json()["sha256"]
    (running,) = submit(api, bob)
    agent1, agent1_token = join(api, pool="p1", name="one")
    agent2, agent2_token = join(api, pool="p2", name="two")
    claims = api.http(agent2_token).post(f"/api/v1/agents/{agent2}/claim", json=claim_body())
    attempt = claims.json()["claims"][0]["attempt_id"]
    (queued,) = submit(api, bob)
    victim = token_id_of(api.token(Role.USER, "victim"))
    assert victim is not None and agent1 != agent2 and running != queued
    return World(api, queued, agent2, attempt, sha, victim, agent1_token, agent2_token)


def snapshot(api: Api) -> Any:
    """Everything a denied request must leave as it was."""
    store = api.store
    jobs = [
        (j.id, j.state, j.attempts, j.cancel_requested, j.retries_left)
        for j in store.list_jobs(JobFilter(limit=None))
    ]
    attempts = [(a.id, a.state, a.lease_until) for j in jobs for a in store.attempts(j[0])]
    agents = [(a.id, a.state, a.drain, a.last_seen) for a in store.list_agents(True)]
    tokens = [(t.id, t.revoked, t.used_at) for t in store.list_tokens()]
    files = sorted(str(p) for p in (api.session.root / "sandbox").rglob("*") if p.is_file())
    digests = [hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files]
    logs = [store.read_log(j[0], stream) for j in jobs for stream in ("stdout", "stderr")]
    return jobs, attempts, agents, tokens, files, digests, logs, len(store.events(limit=100_000))


def role_token(world: World, kind: str, expires_s: float | None = None) -> str:
    """A token of the role that would pass on routes of `kind`."""
    api = world.api
    if kind in ("agent", "upload", "input"):
        return issue(api.store, Role.AGENT, agent_token_name(world.agent), "p2", expires_s)
    role = {"admin": Role.ADMIN, "join": Role.BOOTSTRAP}.get(kind, Role.USER)
    return issue(api.store, role, "bob", "p2" if role is Role.BOOTSTRAP else "", expires_s)


def check(world: World, expected: dict[Route, int], tokens: dict[Route, str | None]) -> None:
    before = snapshot(world.api)
    wrong = []
    for route, status in expected.items():
        answer = world.call(route, tokens[route])
        if answer.status_code != status:
            wrong.append(f"{route.method} {route.path}: {answer.status_code} {answer.text}")
        elif route.method != "HEAD":
            error = {401: "Unauthorized", 403: "Forbidden", 404: "NotFound"}[status]
            assert answer.json()["error"] == error, route
    assert not wrong, "\n".join(wrong)
    assert snapshot(world.api) == before


def test_the_matrix_covers_every_route_of_the_api(api: Api) -> None:
    documented = {
        (method.upper(), path)
        for path, ops in api.http().get("/openapi.json").json()["paths"].items()
        for method in ops
        if path not in ("/health", "/ready")
    }
    covered = {(r.method, r.path.split("?")[0].replace("{job}", "{job_id}")) for r in ROUTES}
    renames = {"{agent}": "{agent_id}", "{attempt}": "{attempt_id}", "{sha}": "{sha256}"}
    renames["{token}"] = "{token_id}"
    for old, new in renames.items():
        covered = {(m, p.replace(old, new)) for m, p in covered}
    assert covered == documented


def test_every_route_refuses_a_request_without_a_token(world: World) -> None:
    check(world, dict.fromkeys(ROUTES, 401), dict.fromkeys(ROUTES))


@pytest.mark.parametrize(
    "bad",
    [
        "clobi_0123456789abcdef_" + "A" * 43,  # well formed, unknown id
        "not-a-clobi-token",
        "clobi_zz_short",
    ],
)
def test_every_route_refuses_a_bad_token(world: World, bad: str) -> None:
    check(world, dict.fromkeys(ROUTES, 401), dict.fromkeys(ROUTES, bad))


def test_every_route_refuses_a_good_id_with_a_wrong_secret(world: World) -> None:
    tokens: dict[Route, str | None] = {}
    for route in ROUTES:
        text = role_token(world, route.kind)
        tokens[route] = text[: -len("xyz")] + "xyz"
    check(world, dict.fromkeys(ROUTES, 401), tokens)


def test_every_route_refuses_an_expired_token_of_the_right_role(world: World) -> None:
    tokens: dict[Route, str | None] = {r: role_token(world, r.kind, 0.001) for r in ROUTES}
    time.sleep(0.01)
    check(world, dict.fromkeys(ROUTES, 401), tokens)


def test_every_route_refuses_a_revoked_token_of_the_right_role(world: World) -> None:
    tokens: dict[Route, str | None] = {}
    for route in ROUTES:
        text = role_token(world, route.kind)
        token_id = token_id_of(text)
        assert token_id is not None and world.api.store.revoke_token(token_id)
        tokens[route] = text
    check(world, dict.fromkeys(ROUTES, 401), tokens)


def test_a_user_finds_no_job_of_another_user(world: World) -> None:
    alice = world.api.token(Role.USER, "alice")
    routes = [r for r in ROUTES if r.kind == "user-job"]
    check(world, dict.fromkeys(routes, 404), dict.fromkeys(routes, alice))


def test_an_agent_cannot_act_for_an_agent_of_another_pool(world: World) -> None:
    routes = [r for r in ROUTES if r.kind in ("agent", "upload")]
    check(world, dict.fromkeys(routes, 403), dict.fromkeys(routes, world.agent1_token))


def test_an_agent_token_cannot_use_user_admin_or_join_routes(world: World) -> None:
    routes = [r for r in ROUTES if r.kind in ("user", "user-job", "admin", "join")]
    check(world, dict.fromkeys(routes, 403), dict.fromkeys(routes, world.agent1_token))


def test_a_user_token_cannot_use_agent_admin_or_join_routes(world: World) -> None:
    bob = world.api.token(Role.USER, "bob")
    routes = [r for r in ROUTES if r.kind in ("agent", "upload", "admin", "join")]
    routes.append(next(r for r in ROUTES if r.kind == "input" and r.method == "GET"))
    check(world, dict.fromkeys(routes, 403), dict.fromkeys(routes, bob))


def test_a_bootstrap_token_can_only_join(world: World) -> None:
    bootstrap = world.api.token(Role.BOOTSTRAP, "b", "p2", expires_s=600)
    routes = [r for r in ROUTES if r.kind not in ("join", "any")]
    check(world, dict.fromkeys(routes, 403), dict.fromkeys(routes, bootstrap))
