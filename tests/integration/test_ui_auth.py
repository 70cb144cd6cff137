"""The dashboard's security model over real HTTP: every page and data route of `/ui` without a
session, with a forged, tampered, expired or logged-out one, with a bearer token instead of a
session; login (only user and admin tokens, only from this server's form); the session cookie's
flags; CSRF tokens and origins on every state-changing route (refused with 403 and nothing
changed); users confined to their own jobs; the security headers on every response."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from clobi.api import ui, ui_data
from clobi.api.app import create_app
from clobi.api.ui import CSP
from clobi.api.ui_auth import CSRF_HEADER, PRINCIPAL_CACHE_S, SESSION_COOKIE
from clobi.auth import token_id_of
from clobi.model.auth import Role
from clobi.model.states import JobState
from tests.integration.test_api_routes import Api, api, claim_body, join, submit
from tests.integration.test_auth_matrix import snapshot

__all__ = ["api"]

PAGES = ("/ui/", "/ui/jobs", "/ui/agents", "/ui/pools", "/ui/jobs/{job}")
READS = (
    "/ui/events",
    "/ui/api/overview",
    "/ui/api/counts",
    "/ui/api/events",
    "/ui/api/series",
    "/ui/api/jobs",
    "/ui/api/jobs/{job}",
    "/ui/api/jobs/{job}/log",
    "/ui/api/jobs/{job}/final-log",
    "/ui/api/jobs/{job}/output",
    "/ui/api/agents",
    "/ui/api/pools",
)
WRITES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("/ui/api/jobs/kill", {"ids": ["{job}"]}),
    ("/ui/api/jobs/retry", {"ids": ["{job}"]}),
    ("/ui/api/agents/{agent}/drain", {"drain": True}),
    ("/ui/api/pools/p1/drain", {"instances": []}),
    ("/ui/api/pools/p1/kill", {"instances": []}),
)
# Open to anyone: the login form and its post, the one-time login link, logout, assets.
OPEN = {"/", "/ui", "/ui/login", "/ui/login/once", "/ui/logout", "/ui/static/{name}"}


@dataclass
class Browser:
    """An HTTP client logged in to the dashboard like a browser: cookies and a CSRF token."""

    http: httpx.Client
    csrf: str

    def post(self, path: str, body: Any, **headers: str) -> httpx.Response:
        sent = {CSRF_HEADER: self.csrf, **headers}
        return self.http.post(path, json=body, headers={k: v for k, v in sent.items() if v})


def login_form(http: httpx.Client) -> str:
    page = http.get("/ui/login")
    found = re.search(r'name="form_id" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


def log_in(api: Api, token: str) -> Browser:
    http = httpx.Client(base_url=api.url, timeout=30)
    api.opened.append(http)
    form = {"token": token, "form_id": login_form(http), "next": "/ui/jobs"}
    answer = http.post("/ui/login", data=form)
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/ui/jobs"
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', http.get("/ui/jobs").text)
    assert csrf
    return Browser(http, csrf.group(1))


@pytest.fixture
def world(api: Api) -> dict[str, int]:
    bob = api.token(Role.USER, "bob")
    (running,) = submit(api, bob)
    agent, agent_token = join(api, pool="p1", name="one")
    api.http(agent_token).post(f"/api/v1/agents/{agent}/claim", json=claim_body())
    (failed_later,) = submit(api, bob)
    return {"job": running, "queued": failed_later, "agent": agent}


def fill(path: str, world: dict[str, int]) -> str:
    return path.format(job=world["job"], agent=world["agent"])


def body_of(body: dict[str, Any], world: dict[str, int]) -> dict[str, Any]:
    return {k: [world["job"]] if v == ["{job}"] else v for k, v in body.items()}


def test_the_tables_here_cover_every_route_of_the_dashboard(api: Api) -> None:
    served = {getattr(r, "path", "") for r in (*ui.router.routes, *ui_data.router.routes)}
    listed = {*PAGES, *READS, *(w[0] for w in WRITES), *OPEN}
    listed = {p.replace("{job}", "{job_id}").replace("{agent}", "{agent_id}") for p in listed}
    listed = {p.replace("/pools/p1/", "/pools/{pool}/") for p in listed}
    assert served == listed
    document = api.http().get("/openapi.json").json()["paths"]
    assert not [p for p in document if p == "/" or p.startswith("/ui")]


def test_pages_without_a_session_send_the_browser_to_the_login_form(
    api: Api, world: dict[str, int]
) -> None:
    for page in PAGES:
        path = fill(page, world)
        answer = api.http().get(path, follow_redirects=False)
        assert answer.status_code == 303, path
        assert answer.headers["location"] == f"/ui/login?next={path.replace('/', '%2F')}"


@pytest.mark.parametrize(
    "cookie",
    [
        None,
        "garbage",
        "0011223344556677.abc.9999999999.00",
        "0011223344556677.abc.9999999999." + "0" * 64,
    ],
)
def test_data_routes_and_actions_refuse_a_request_without_a_valid_session(
    api: Api, world: dict[str, int], cookie: str | None
) -> None:
    admin = api.token(Role.ADMIN, "root")
    http = api.http(admin)  # a bearer token is no dashboard session
    if cookie is not None:
        http.cookies.set(SESSION_COOKIE, cookie)
    before = snapshot(api)
    for path in READS:
        assert http.get(fill(path, world)).status_code == 401, path
    for path, body in WRITES:
        answer = http.post(fill(path, world), json=body_of(body, world))
        assert answer.status_code == 401, path
    assert snapshot(api) == before


def test_a_tampered_or_expired_session_cookie_is_refused(api: Api) -> None:
    browser = log_in(api, api.token(Role.ADMIN, "root"))
    cookie = browser.http.cookies[SESSION_COOKIE]
    token_id, session_id, expires, mac = cookie.split(".")
    assert browser.http.get("/ui/api/jobs").status_code == 200
    for forged in (
        f"{token_id}.{session_id}.{int(expires) + 3600}.{mac}",
        f"{token_id_of(api.token(Role.ADMIN, 'other'))}.{session_id}.{expires}.{mac}",
        f"{token_id}.{session_id}x.{expires}.{mac}",
    ):
        browser.http.cookies.set(SESSION_COOKIE, forged)
        assert browser.http.get("/ui/api/jobs").status_code == 401


def test_the_session_cookie_is_httponly_samesite_and_holds_no_token_secret(api: Api) -> None:
    token = api.token(Role.USER, "alice")
    http = api.http()
    answer = http.post(
        "/ui/login", data={"token": token, "form_id": login_form(http), "next": "/ui/"}
    )
    (cookie,) = [c for c in answer.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE)]
    flags = {f.strip().lower() for f in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= flags
    assert "secure" not in flags  # plain HTTP here; on TLS the cookie is Secure
    assert token.split("_", 2)[2] not in cookie


@pytest.mark.parametrize("role", [Role.AGENT, Role.BOOTSTRAP])
def test_only_user_and_admin_tokens_log_in(api: Api, role: Role) -> None:
    token = api.token(role, "x", "p1", expires_s=600)
    http = api.http()
    answer = http.post("/ui/login", data={"token": token, "form_id": login_form(http)})
    assert answer.status_code == 401
    assert SESSION_COOKIE not in answer.headers.get("set-cookie", "")


def test_a_bad_token_or_a_login_without_this_server_s_form_sets_no_session(api: Api) -> None:
    http = api.http()
    bad = http.post("/ui/login", data={"token": "clobi_x_y", "form_id": login_form(http)})
    assert bad.status_code == 401
    assert "not valid" in bad.text
    good = api.token(Role.ADMIN, "root")
    elsewhere = api.http().post("/ui/login", data={"token": good, "form_id": "made-up"})
    assert elsewhere.status_code == 403
    for answer in (bad, elsewhere):
        assert SESSION_COOKIE not in answer.headers.get("set-cookie", "")


def test_after_login_the_browser_goes_only_to_a_dashboard_page(api: Api) -> None:
    token = api.token(Role.ADMIN, "root")
    for target, expected in [
        ("/ui/jobs/3", "/ui/jobs/3"),
        ("//evil.example/ui", "/ui/"),
        ("https://evil.example/", "/ui/"),
        ("/ui\\@evil", "/ui/"),
    ]:
        http = api.http()
        form = {"token": token, "form_id": login_form(http), "next": target}
        assert http.post("/ui/login", data=form).headers["location"] == expected


def test_state_changing_requests_need_the_csrf_token_and_this_origin(
    api: Api, world: dict[str, int]
) -> None:
    browser = log_in(api, api.token(Role.ADMIN, "root"))
    before = snapshot(api)
    for path, body in WRITES:
        url, sent = fill(path, world), body_of(body, world)
        for headers in (
            {CSRF_HEADER: ""},  # none
            {CSRF_HEADER: "0" * 64},  # a wrong one
            {CSRF_HEADER: browser.csrf[:-1] + "x"},
            {"Origin": "http://evil.example"},  # the right token from another site
        ):
            answer = browser.post(url, sent, **headers)
            assert answer.status_code == 403, (path, headers, answer.text)
            assert answer.json()["error"] == "Forbidden"
    assert snapshot(api) == before
    killed = browser.post("/ui/api/jobs/kill", {"ids": [world["queued"]]}, Origin=api.url)
    assert killed.json() == {"ids": [world["queued"]]}
    assert api.store.get_job(world["queued"]).state is JobState.CANCELLED


def test_logging_out_needs_the_csrf_token_and_ends_the_session(api: Api) -> None:
    browser = log_in(api, api.token(Role.USER, "alice"))
    cookie = browser.http.cookies[SESSION_COOKIE]
    refused = browser.http.post("/ui/logout", data={"csrf": "wrong"})
    assert refused.status_code == 403
    assert browser.http.get("/ui/api/jobs").status_code == 200
    out = browser.http.post("/ui/logout", data={"csrf": browser.csrf})
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    replay = api.http()
    replay.cookies.set(SESSION_COOKIE, cookie)  # a copy of the cookie kept elsewhere
    assert replay.get("/ui/api/jobs").status_code == 401


def test_revoking_the_token_ends_its_dashboard_sessions(api: Api) -> None:
    token = api.token(Role.USER, "alice")
    browser = log_in(api, token)
    token_id = token_id_of(token)
    assert token_id is not None and api.store.revoke_token(token_id)
    time.sleep(PRINCIPAL_CACHE_S + 0.1)
    assert browser.http.get("/ui/api/jobs").status_code == 401
    assert browser.http.get("/ui/jobs", follow_redirects=False).status_code == 303


def test_a_user_sees_and_acts_on_only_their_own_jobs(api: Api, world: dict[str, int]) -> None:
    alice = api.token(Role.USER, "alice")
    (mine,) = submit(api, alice)
    browser = log_in(api, alice)
    listed = browser.http.get("/ui/api/jobs", params={"user": "bob"}).json()["jobs"]
    assert [j["id"] for j in listed] == [mine]
    counts = browser.http.get("/ui/api/counts").json()
    assert sum(counts.values()) == 1
    for path in ("/ui/api/jobs/{job}", "/ui/api/jobs/{job}/log", "/ui/api/jobs/{job}/output"):
        assert browser.http.get(fill(path, world)).status_code == 404
    before = snapshot(api)
    assert browser.post("/ui/api/jobs/kill", {"ids": [world["job"]]}).status_code == 404
    assert browser.post("/ui/api/jobs/kill", {"ids": [mine, world["job"]]}).status_code == 404
    for path, body in WRITES[2:]:
        answer = browser.post(fill(path, world), body_of(body, world))
        assert answer.status_code == 403, path
    assert snapshot(api) == before
    events = browser.http.get("/ui/api/events").json()
    assert {e["job_id"] for e in events if e["job_id"]} == {mine}
    assert {e["kind"] for e in events if not e["job_id"]} == {"agent_up"}
    assert browser.http.get("/ui/api/pools").json()["decisions"] == []


def test_an_admin_sees_every_job_and_filters_by_user(api: Api, world: dict[str, int]) -> None:
    submit(api, api.token(Role.USER, "alice"))
    browser = log_in(api, api.token(Role.ADMIN, "root"))
    every = browser.http.get("/ui/api/jobs").json()["jobs"]
    assert [j["id"] for j in every] == sorted((j["id"] for j in every), reverse=True)
    assert len(every) == 3
    bobs = browser.http.get("/ui/api/jobs", params={"user": "bob"}).json()["jobs"]
    assert {j["owner"] for j in bobs} == {"bob"} and len(bobs) == 2
    drained = browser.post(f"/ui/api/agents/{world['agent']}/drain", {"drain": True})
    assert drained.json() == {"drain": True}
    assert next(a for a in api.store.list_agents() if a.id == world["agent"]).drain


def test_every_dashboard_response_carries_the_security_headers(
    api: Api, world: dict[str, int]
) -> None:
    browser = log_in(api, api.token(Role.ADMIN, "root"))
    answers = [
        api.http().get("/", follow_redirects=False),
        api.http().get("/ui/login"),
        api.http().get("/ui/jobs", follow_redirects=False),
        api.http().get("/ui/api/jobs"),  # 401
        api.http().get("/ui/static/common.js"),
        api.http().get("/ui/static/nothing.js"),  # 404
        browser.http.get("/ui/"),
        browser.http.get(fill("/ui/jobs/{job}", world)),
        browser.http.get("/ui/api/overview"),
        browser.post("/ui/api/jobs/kill", {"ids": [1]}, **{CSRF_HEADER: ""}),  # 403
    ]
    for answer in answers:
        where = f"{answer.request.method} {answer.request.url.path} {answer.status_code}"
        assert answer.headers.get("content-security-policy") == CSP, where
        assert answer.headers.get("x-content-type-options") == "nosniff", where
        assert answer.headers.get("referrer-policy") == "same-origin", where
    assert "content-security-policy" not in api.http().get("/health").headers


def test_only_the_dashboard_s_assets_are_served(api: Api) -> None:
    http = api.http()
    assert http.get("/ui/static/common.js").headers["content-type"].startswith("text/javascript")
    assert http.get("/ui/static/app.css").headers["content-type"].startswith("text/css")
    for name in ("layout.html", "__init__.py", "..%2F__init__.py", "COMMON.JS", ".js"):
        assert http.get(f"/ui/static/{name}").status_code == 404, name


def test_names_in_pages_are_escaped(api: Api) -> None:
    name = '<script>alert("x")</script>'
    browser = log_in(api, api.token(Role.USER, name))
    page = browser.http.get("/ui/jobs").text
    assert name not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "<script>" not in page.replace('<script type="module"', "")


def test_a_one_time_login_link_works_once(api: Api) -> None:
    from clobi.api.ui import login_code

    sandbox = api.session.open_sandbox()
    app = create_app(api.store, sandbox, api.session.settings, sweep=False)
    code = login_code(app, api.token(Role.ADMIN, "root"))

    async def browse() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as first,
            httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as again,
        ):
            answer = await first.get(f"/ui/login/once?code={code}")
            assert SESSION_COOKIE in answer.headers["set-cookie"]
            return [
                answer.status_code,
                (await first.get("/ui/api/jobs")).status_code,
                (await again.get(f"/ui/login/once?code={code}")).status_code,
                (await again.get("/ui/api/jobs")).status_code,
            ]

    try:
        assert asyncio.run(browse()) == [303, 200, 401, 401]
    finally:
        sandbox.close()
