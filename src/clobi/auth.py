"""Issuing and checking access tokens.

A token is shown to its holder once as `clobi_<id>_<secret>` (`id`: 16 hex characters,
`secret`: `secrets.token_urlsafe(32)`); the store keeps the id, the role and scope, and only
the sha256 of the secret. Messages here never contain token text: a token that reached a log
or an error message would be a leaked credential.

A server checks tokens through a `TokenCache`: a token found usable is trusted again for
`AUTH_CACHE_S` seconds without asking the store (never past its expiry; bootstrap tokens are
never cached, as they are spent on use). So a revoked token may keep working for up to that
long on a server that checked it just before; a server forgets at once the tokens it revokes
itself through `TokenCache.forget` (an exiting agent's token).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable

from clobi.errors import Unauthorized
from clobi.model.auth import Principal, Role, TokenRecord
from clobi.store.base import Store

PREFIX = "clobi_"
_FORMAT = re.compile(r"clobi_([0-9a-f]{16})_([A-Za-z0-9_-]{16,128})")
# Compared against when the id is unknown, so that unknown ids take as long as bad secrets.
_NO_DIGEST = "0" * 64
# How long a server trusts a token it found usable without asking the store again: the most
# a revocation made elsewhere (another server, the CLI on the database) can lag.
AUTH_CACHE_S = 2.0
AUTH_CACHE_MAX = 4096


def digest(secret: str) -> str:
    """The sha256 (hex) of a token's secret: what the store keeps."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token(
    role: Role, name: str, pool: str = "", expires_s: float | None = None
) -> tuple[TokenRecord, str, str]:
    """A fresh token: its record, the sha256 of its secret, and the text shown once."""
    token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    now = time.time()
    record = TokenRecord(
        id=token_id,
        role=role,
        name=name,
        pool=pool,
        created_at=now,
        expires_at=None if expires_s is None else now + expires_s,
    )
    return record, digest(secret), f"{PREFIX}{token_id}_{secret}"


def issue(
    store: Store, role: Role, name: str, pool: str = "", expires_s: float | None = None
) -> str:
    """Create a token in `store` and return its text (the only time it is ever shown)."""
    record, secret_sha256, text = new_token(role, name, pool, expires_s)
    store.create_token(record, secret_sha256)
    return text


def token_id_of(text: str) -> str | None:
    """The id part of a well-formed token text (not secret), else None."""
    match = _FORMAT.fullmatch(text.strip())
    return match.group(1) if match else None


def authenticate(store: Store, text: str, now: float | None = None) -> Principal:
    """Who holds the token `text`; raises `Unauthorized` for anything but a usable token."""
    return _principal(_check(store, text, time.time() if now is None else now))


def _check(store: Store, text: str, now: float) -> TokenRecord:
    match = _FORMAT.fullmatch(text.strip())
    if match is None:
        raise Unauthorized("malformed token")
    token_id, secret = match.groups()
    found = store.get_token(token_id)
    expected = found[1] if found is not None else _NO_DIGEST
    matches = hmac.compare_digest(digest(secret), expected)
    if found is None or not matches:
        raise Unauthorized("invalid token")
    record = found[0]
    if not record.usable(now):
        raise Unauthorized("the token is expired, revoked or already used")
    return record


def _principal(record: TokenRecord) -> Principal:
    return Principal(token_id=record.id, role=record.role, name=record.name, pool=record.pool)


class TokenCache:
    """Tokens recently found usable, trusted for `ttl_s` seconds without asking the store.

    Entries are keyed by the token's id and the sha256 of its secret (never the text itself),
    so only the exact token that was checked matches. `cached` is cheap and does no I/O (call
    it on the event loop); `authenticate` asks the store on a miss (call it in a worker
    thread). Safe to use from several threads.
    """

    def __init__(
        self,
        store: Store,
        ttl_s: float = AUTH_CACHE_S,
        max_entries: int = AUTH_CACHE_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._max = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        # (id, sha256 of secret) -> (principal, trusted until on `clock`, expires_at or None)
        self._entries: dict[tuple[str, str], tuple[Principal, float, float | None]] = {}

    def cached(self, text: str) -> Principal | None:
        """The principal of `text` if it was found usable within the last `ttl_s`, else None."""
        key = _key(text)
        hit = None if key is None else self._entries.get(key)
        if key is None or hit is None:
            return None
        principal, until, expires_at = hit
        if self._clock() >= until or (expires_at is not None and time.time() >= expires_at):
            with self._lock:
                self._entries.pop(key, None)
            return None
        return principal

    def authenticate(self, text: str) -> Principal:
        """Like `authenticate`, answering from the cache when it can (blocking on a miss)."""
        hit = self.cached(text)
        if hit is not None:
            return hit
        record = _check(self._store, text, time.time())
        principal = _principal(record)
        key = _key(text)
        if record.role is not Role.BOOTSTRAP and key is not None and self._ttl_s > 0:
            entry = (principal, self._clock() + self._ttl_s, record.expires_at)
            with self._lock:
                if len(self._entries) >= self._max:
                    self._entries.clear()  # many live tokens at once: start over, stay small
                self._entries[key] = entry
        return principal

    def forget(self, token_id: str) -> None:
        """Stop trusting token `token_id` at once (it was revoked through this server)."""
        with self._lock:
            for key in [k for k in self._entries if k[0] == token_id]:
                del self._entries[key]


def _key(text: str) -> tuple[str, str] | None:
    match = _FORMAT.fullmatch(text.strip())
    if match is None:
        return None
    token_id, secret = match.groups()
    return token_id, digest(secret)


def token_state(record: TokenRecord, now: float | None = None) -> str:
    """`active`, `revoked`, `expired` or `used`, for listings."""
    now = time.time() if now is None else now
    if record.revoked:
        return "revoked"
    if record.expires_at is not None and now >= record.expires_at:
        return "expired"
    if record.role is Role.BOOTSTRAP and record.used_at is not None:
        return "used"
    return "active"
