"""The web dashboard: pages at `/ui/...` (and `/`), their scripts, login and logout, and the
live event stream. The JSON the pages show comes from `ui_data`; sessions and CSRF checks from
`ui_auth`; live updates from `ui_events`.

None of these routes is in the OpenAPI document: they are for browsers, with a session cookie
instead of a bearer token. Every response under `/ui` carries a strict Content-Security-Policy
(scripts and styles only from this server, no inline ones), `nosniff`, referrers only to itself
and `frame-ancestors 'none'`.
"""

from __future__ import annotations

import secrets
import time
import urllib.parse
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clobi import __version__, web
from clobi.api import ui_data
from clobi.api.deps import ServerState
from clobi.api.models import Id
from clobi.api.ui_auth import (
    LOGIN_COOKIE,
    LOGIN_FORM_TTL_S,
    SESSION_COOKIE,
    UiReader,
    UiSession,
    UiSessions,
    check_same_origin,
    maybe_session,
    sessions_of,
    set_cookie,
)
from clobi.api.ui_events import EventHub, stream
from clobi.errors import ClobiError, Forbidden

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    # same-origin, not no-referrer: with no-referrer browsers send `Origin: null` on this site's own
    # form posts (logout), which the same-origin check must then refuse.
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
)
MAX_FORM_BYTES = 16 * 1024
PAGES = {"/ui/": "overview", "/ui/jobs": "jobs", "/ui/agents": "agents", "/ui/pools": "pools"}
TITLES = {"overview": "Overview", "jobs": "Jobs", "job": "Job", "agents": "Agents"}
TITLES["pools"] = "Pools"

router = APIRouter(include_in_schema=False)


@dataclass
class UiState:
    """The dashboard's share of a server: sessions and the live event hub."""

    sessions: UiSessions
    hub: EventHub


def install(app: FastAPI, state: ServerState) -> None:
    """Serve the dashboard from `app` (over `state`'s store)."""
    app.state.clobi_ui = UiState(UiSessions(state.store), EventHub(state.store))
    app.include_router(router)
    app.include_router(ui_data.router)
    app.add_middleware(SecurityHeaders)


def stop(app: FastAPI) -> None:
    """End the live streams soon (safe to call from a signal handler)."""
    ui = getattr(app.state, "clobi_ui", None)
    if isinstance(ui, UiState):
        ui.hub.stop()


def login_code(app: FastAPI, token_text: str) -> str:
    """A one-time code for `/ui/login/once?code=...` that logs in as `token_text`."""
    ui = app.state.clobi_ui
    assert isinstance(ui, UiState)
    return ui.sessions.add_code(token_text)


class SecurityHeaders:
    """Adds the security headers to every response under `/ui` and to `/`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else None
        if path is None or not (path in {"/", "/ui"} or path.startswith("/ui/")):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --- pages --------------------------------------------------------------------------------
Maybe = Annotated[UiSession | None, Depends(maybe_session)]


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    query = urllib.parse.urlencode({"next": target})
    return RedirectResponse(f"/ui/login?{query}", status_code=303)


def _page(name: str, session: UiSession, **values: str) -> HTMLResponse:
    p = session.principal
    html = web.render(
        name,
        title=TITLES[name],
        page=name,
        user=p.name,
        role=str(p.role),
        csrf=session.csrf,
        version=__version__,
        **values,
    )
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


@router.get("/")
@router.get("/ui")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


def _page_route(path: str, name: str) -> None:
    async def show(request: Request, session: Maybe) -> Response:
        if session is None:
            return _to_login(request)
        return _page(name, session)

    router.add_api_route(path, show, methods=["GET"], name=f"ui_{name}")


for _path, _name in PAGES.items():
    _page_route(_path, _name)


@router.get("/ui/jobs/{job_id}")
async def job_page(request: Request, session: Maybe, job_id: Id) -> Response:
    if session is None:
        return _to_login(request)
    return _page("job", session, job_id=str(job_id))


@router.get("/ui/static/{name}")
async def static(name: str) -> Response:
    found = web.asset(name)
    if found is None:
        return Response("not found", status_code=404, media_type="text/plain")
    data, content_type = found
    return Response(data, media_type=content_type, headers={"Cache-Control": "no-cache"})


# --- login and logout -----------------------------------------------------------------------
def _safe_next(target: str | None) -> str:
    """Where to go after logging in: only a path of the dashboard (no open redirect)."""
    if target and target.startswith("/ui") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/"


def _login_page(request: Request, message: str = "", status: int = 200) -> HTMLResponse:
    form_id = secrets.token_urlsafe(18)
    html = web.render(
        "login",
        layout=None,
        form_id=form_id,
        next=_safe_next(request.query_params.get("next")),
        message=message,
        hidden="" if message else "hidden",
        version=__version__,
    )
    response = HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})
    set_cookie(
        response, request, LOGIN_COOKIE, form_id, max_age=int(LOGIN_FORM_TTL_S), path="/ui/login"
    )
    return response


@router.get("/ui/login")
async def login_form(request: Request) -> HTMLResponse:
    return _login_page(request)


@router.post("/ui/login")
async def login(request: Request) -> Response:
    """Log in with a token typed into the form; the form must come from this server's login
    page (its id matches the login cookie), so another site cannot log a browser in."""
    form = await _form(request)
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or form.get("form_id") != expected:
        return _login_page(request, "The login form expired; please try again.", 403)
    try:
        cookie, session = await run_in_threadpool(sessions_of(request).start, form.get("token", ""))
    except ClobiError:
        return _login_page(request, "That token is not valid for the dashboard.", 401)
    target = _safe_next(form.get("next"))
    response = RedirectResponse(target, status_code=303)
    max_age = max(1, int(session.expires_at - time.time()))
    set_cookie(response, request, SESSION_COOKIE, cookie, max_age=max_age)
    response.delete_cookie(LOGIN_COOKIE, path="/ui/login")
    return response


@router.get("/ui/login/once")
async def login_once(request: Request, code: str = "") -> Response:
    """Log in with a one-time code (the link `clobi ui` prints)."""
    token = sessions_of(request).take_code(code)
    if token is None:
        return _login_page(request, "That login link was used or has expired.", 401)
    cookie, session = await run_in_threadpool(sessions_of(request).start, token)
    response = RedirectResponse("/ui/", status_code=303)
    max_age = max(1, int(session.expires_at - time.time()))
    set_cookie(response, request, SESSION_COOKIE, cookie, max_age=max_age)
    return response


@router.post("/ui/logout")
async def logout(request: Request, session: Maybe) -> Response:
    form = await _form(request)
    if session is not None:
        check_same_origin(request)
        if form.get("csrf") != session.csrf:
            raise Forbidden("missing or wrong CSRF token")
        sessions_of(request).end(session)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form body (small), first value of each field."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise Forbidden("form too large")
    fields = urllib.parse.parse_qs(body.decode("utf-8", "replace"), max_num_fields=20)
    return {k: v[0] for k, v in fields.items()}


# --- live events ------------------------------------------------------------------------------
@router.get("/ui/events")
async def events(request: Request, session: UiReader) -> StreamingResponse:
    """Server-Sent Events: every store event the session's principal may see, as it happens."""
    ui = request.app.state.clobi_ui
    assert isinstance(ui, UiState)
    await ui.hub.started()
    sub, reset = ui.hub.subscribe(session.principal, request.headers.get("last-event-id"))
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(
        stream(ui.hub, sub, reset), media_type="text/event-stream", headers=headers
    )
