"""Issuing and checking access tokens.

A token is shown to its holder once as `clobi_<id>_<secret>` (`id`: 16 hex characters,
`secret`: `secrets.token_urlsafe(32)`); the store keeps the id, the role and scope, and only
the sha256 of the secret. Messages here never contain token text: a token that reached a log
or an error message would be a leaked credential.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

from clobi.errors import Unauthorized
from clobi.model.auth import Principal, Role, TokenRecord
from clobi.store.base import Store

PREFIX = "clobi_"
_FORMAT = re.compile(r"clobi_([0-9a-f]{16})_([A-Za-z0-9_-]{16,128})")
# Compared against when the id is unknown, so that unknown ids take as long as bad secrets.
_NO_DIGEST = "0" * 64


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
    if not record.usable(time.time() if now is None else now):
        raise Unauthorized("the token is expired, revoked or already used")
    return Principal(token_id=record.id, role=record.role, name=record.name, pool=record.pool)


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
