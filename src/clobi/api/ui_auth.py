"""Dashboard sessions: a token typed once into the login form becomes a signed cookie.

The cookie holds the token's id, a random session id and the session's expiry, signed with
HMAC-SHA256 under a key kept in the store (so every replica of the server and a restarted one
accept it); it never holds the token's secret. Each request checks the signature, the expiry
and that the token is still usable (a revoked or expired token ends its sessions within
`PRINCIPAL_CACHE_S`). Logging out forgets the session id in this process.

CSRF: every state-changing request must carry the session's CSRF token (an HMAC of the session
id) in the `X-CSRF-Token` header (scripts) or a `csrf` form field (the logout form), and must
not come from another origin. The cookie is HttpOnly and SameSite=Strict, and Secure on TLS.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from starlette.responses import Response

from clobi.errors import Forbidden, Unauthorized
from clobi.model.auth import Principal, Role, TokenRecord
from clobi.store.base import Store

SESSION_COOKIE = "clobi_session"
LOGIN_COOKIE = "clobi_login"
CSRF_HEADER = "X-CSRF-Token"
SESSION_TTL_S = 12 * 3600.0
LOGIN_FORM_TTL_S = 600.0
LOGIN_CODE_TTL_S = 600.0
# How long a session trusts its token's record without asking the store again: the most a
# token's revocation can lag in the dashboard (as for bearer tokens, `clobi.auth`).
PRINCIPAL_CACHE_S = 2.0
KEY_META = "ui_session_key"
_KEY_LOCK = "ui_session_key"


@dataclass(frozen=True)
class UiSession:
    """A logged-in browser: whose token it acts with, until when, and its CSRF token."""

    session_id: str
    principal: Principal
    expires_at: float
    csrf: str


def _mac(key: bytes, purpose: str, text: str) -> str:
    return hmac.new(key, f"{purpose}:{text}".encode(), hashlib.sha256).hexdigest()


class UiSessions:
    """Issues and checks session cookies (safe to use from several threads)."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._lock = threading.Lock()
        self._key: bytes | None = None
        self._ended: dict[str, float] = {}  # session id -> its expiry (forgotten after it)
        self._records: dict[str, tuple[TokenRecord, float]] = {}  # token id -> (record, until)
        self._codes: dict[str, tuple[str, float]] = {}  # one-time login code -> (token, until)

    # --- the signing key ------------------------------------------------------------------
    def key(self) -> bytes:
        """The session's signing key, made once per store (blocking)."""
        if self._key is None:
            self._key = self._load_key()
        return self._key

    def _load_key(self) -> bytes:
        owner = secrets.token_hex(8)
        for _ in range(100):
            found = self._store.get_meta(KEY_META)
            if found:
                return bytes.fromhex(found)
            if self._store.try_lock(_KEY_LOCK, owner, 30.0):
                if not self._store.get_meta(KEY_META):
                    self._store.set_meta(KEY_META, secrets.token_hex(32))
                continue
            time.sleep(0.05)  # another replica is making it
        raise Unauthorized("the dashboard's session key cannot be read from the store")

    # --- sessions ---------------------------------------------------------------------------
    def start(self, token_text: str) -> tuple[str, UiSession]:
        """Log in with a token (blocking): the cookie value and the session. Only admin and
        user tokens may use the dashboard."""
        from clobi.auth import authenticate

        principal = authenticate(self._store, token_text)
        if principal.role not in (Role.ADMIN, Role.USER):
            raise Forbidden(f"{principal.role} tokens cannot use the dashboard")
        found = self._store.get_token(principal.token_id)
        token_expiry = found[0].expires_at if found is not None else None
        expires = self._clock() + SESSION_TTL_S
        if token_expiry is not None:
            expires = min(expires, token_expiry)
        session_id = secrets.token_urlsafe(18)
        body = f"{principal.token_id}.{session_id}.{int(expires)}"
        cookie = f"{body}.{_mac(self.key(), 'session', body)}"
        return cookie, UiSession(session_id, principal, int(expires), self.csrf_of(session_id))

    def check(self, cookie: str) -> UiSession | None:
        """The session of a cookie value (blocking on a cache miss); None when the cookie is
        forged, expired, logged out, or its token is no longer usable."""
        parts = cookie.split(".")
        if len(parts) != 4 or not parts[2].isdigit():
            return None
        token_id, session_id, expires_text, mac = parts
        body = f"{token_id}.{session_id}.{expires_text}"
        if not hmac.compare_digest(mac, _mac(self.key(), "session", body)):
            return None
        now, expires = self._clock(), float(expires_text)
        if now >= expires or session_id in self._ended:
            return None
        record = self._record(token_id, now)
        if record is None or record.role not in (Role.ADMIN, Role.USER):
            return None
        principal = Principal(record.id, record.role, record.name, record.pool)
        return UiSession(session_id, principal, expires, self.csrf_of(session_id))

    def _record(self, token_id: str, now: float) -> TokenRecord | None:
        hit = self._records.get(token_id)
        if hit is not None and time.monotonic() < hit[1] and hit[0].usable(now):
            return hit[0]
        found = self._store.get_token(token_id)
        if found is None or not found[0].usable(now):
            return None
        with self._lock:
            if len(self._records) > 4096:
                self._records.clear()
            self._records[token_id] = (found[0], time.monotonic() + PRINCIPAL_CACHE_S)
        return found[0]

    def end(self, session: UiSession) -> None:
        """Log out: this process refuses the session's cookie from now on."""
        now = self._clock()
        with self._lock:
            self._ended = {s: e for s, e in self._ended.items() if e > now}
            self._ended[session.session_id] = session.expires_at

    def csrf_of(self, session_id: str) -> str:
        return _mac(self.key(), "csrf", session_id)

    # --- one-time login codes (`clobi ui`) --------------------------------------------------
    def add_code(self, token_text: str, ttl_s: float = LOGIN_CODE_TTL_S) -> str:
        """A code that logs in once as `token_text` (for a link printed by `clobi ui`)."""
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._codes[code] = (token_text, time.monotonic() + ttl_s)
        return code

    def take_code(self, code: str) -> str | None:
        """The token of a one-time code, which is spent; None when unknown or too old."""
        with self._lock:
            found = self._codes.pop(code, None)
        if found is None or time.monotonic() >= found[1]:
            return None
        return found[0]


# --- what routes depend on -----------------------------------------------------------------
def sessions_of(request: Request) -> UiSessions:
    found = request.app.state.clobi_ui.sessions
    assert isinstance(found, UiSessions)
    return found


async def maybe_session(request: Request) -> UiSession | None:
    """The request's dashboard session, if it has a valid one."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    return await run_in_threadpool(sessions_of(request).check, cookie)


async def _session(request: Request) -> UiSession:
    found = await maybe_session(request)
    if found is None:
        raise Unauthorized("log in to the dashboard first")
    return found


async def _changing(
    request: Request, session: Annotated[UiSession, Depends(_session)]
) -> UiSession:
    check_same_origin(request)
    sent = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
        raise Forbidden(f"missing or wrong CSRF token (send the {CSRF_HEADER} header)")
    return session


async def _admin(session: Annotated[UiSession, Depends(_changing)]) -> UiSession:
    if not session.principal.is_admin:
        raise Forbidden("only admin tokens may do this")
    return session


UiReader = Annotated[UiSession, Depends(_session)]
UiWriter = Annotated[UiSession, Depends(_changing)]
UiAdmin = Annotated[UiSession, Depends(_admin)]


def check_same_origin(request: Request) -> None:
    """Refuse a state-changing request a browser says comes from another origin."""
    origin = request.headers.get("origin")
    if origin is None:  # not a browser, or one that does not say: the CSRF token decides
        return
    expected = f"{request.url.scheme}://{request.url.netloc}"
    if origin != expected:
        raise Forbidden("the request comes from another origin")


def set_cookie(
    response: Response, request: Request, name: str, value: str, *, max_age: int, path: str = "/"
) -> None:
    """A cookie scripts cannot read, sent to this site only (and only over TLS on TLS)."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=path,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
