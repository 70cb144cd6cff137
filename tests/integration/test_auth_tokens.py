"""Issuing and checking tokens against a real SQLite store."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clobi.auth import TokenCache, authenticate, issue, token_id_of, token_state
from clobi.errors import Unauthorized
from clobi.model.auth import Role
from clobi.store.base import Store
from clobi.store.sqlite import SqliteStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = SqliteStore(tmp_path / "clobi.db")
    yield store
    store.close()


def test_a_token_is_shown_once_and_only_its_digest_is_stored(store: Store) -> None:
    text = issue(store, Role.USER, "alice")
    prefix, token_id, secret = text[:6], text[6:22], text[23:]
    assert prefix == "clobi_" and token_id_of(text) == token_id
    found = store.get_token(token_id)
    assert found is not None
    record, digest = found
    assert digest == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in repr(record)


def test_a_valid_token_authenticates_as_its_role_name_and_pool(store: Store) -> None:
    text = issue(store, Role.AGENT, "agent-3", "gpu")
    who = authenticate(store, text)
    assert (who.role, who.name, who.pool) == (Role.AGENT, "agent-3", "gpu")


@pytest.mark.parametrize("tamper", ["secret", "id", "format"])
def test_a_tampered_token_is_unauthorized_and_never_quoted(store: Store, tamper: str) -> None:
    text = issue(store, Role.ADMIN, "root")
    bad = {
        "secret": text[:-4] + "AAAA",
        "id": text[:6] + "f" * 16 + text[22:],
        "format": text.replace("clobi_", "clobi-"),
    }[tamper]
    with pytest.raises(Unauthorized) as raised:
        authenticate(store, bad)
    assert bad[23:] not in raised.value.message and text[23:] not in raised.value.message


def test_expired_and_revoked_tokens_are_unauthorized(store: Store) -> None:
    expired = issue(store, Role.USER, "alice", expires_s=0.001)
    revoked = issue(store, Role.USER, "bob")
    revoked_id = token_id_of(revoked)
    assert revoked_id is not None and store.revoke_token(revoked_id)
    time.sleep(0.01)
    for text in (expired, revoked):
        with pytest.raises(Unauthorized):
            authenticate(store, text)
    states = {t.name: token_state(t) for t in store.list_tokens()}
    assert states == {"alice": "expired", "bob": "revoked"}


def test_a_bootstrap_token_is_spent_exactly_once(store: Store) -> None:
    text = issue(store, Role.BOOTSTRAP, "boot", "p1", expires_s=600)
    who = authenticate(store, text)
    assert store.use_bootstrap(who.token_id)
    assert not store.use_bootstrap(who.token_id)
    with pytest.raises(Unauthorized):
        authenticate(store, text)


# --- the server's token cache ------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_checked_token_is_trusted_for_the_cache_time_only(store: Store) -> None:
    clock = Clock()
    cache = TokenCache(store, ttl_s=2.0, clock=clock)
    text = issue(store, Role.USER, "alice")
    assert cache.cached(text) is None
    assert cache.authenticate(text).name == "alice"
    token_id = token_id_of(text)
    assert token_id is not None and store.revoke_token(token_id)
    clock.now += 1.9
    assert cache.authenticate(text).name == "alice"  # revoked elsewhere: trusted a while yet
    clock.now += 0.2
    assert cache.cached(text) is None
    with pytest.raises(Unauthorized):
        cache.authenticate(text)


def test_a_token_revoked_through_this_server_is_forgotten_at_once(store: Store) -> None:
    cache = TokenCache(store, clock=Clock())
    text = issue(store, Role.AGENT, "agent-1", "p")
    who = cache.authenticate(text)
    assert store.revoke_token(who.token_id)
    cache.forget(who.token_id)
    with pytest.raises(Unauthorized):
        cache.authenticate(text)


def test_a_cached_token_is_refused_once_it_expires(store: Store) -> None:
    cache = TokenCache(store, ttl_s=60.0)
    text = issue(store, Role.USER, "alice", expires_s=0.05)
    cache.authenticate(text)
    time.sleep(0.06)
    assert cache.cached(text) is None
    with pytest.raises(Unauthorized):
        cache.authenticate(text)


def test_bootstrap_tokens_are_never_cached(store: Store) -> None:
    cache = TokenCache(store, clock=Clock())
    text = issue(store, Role.BOOTSTRAP, "boot", "p1", expires_s=600)
    who = cache.authenticate(text)
    assert store.use_bootstrap(who.token_id)
    with pytest.raises(Unauthorized):
        cache.authenticate(text)


def test_only_the_very_token_that_was_checked_is_served_from_the_cache(store: Store) -> None:
    cache = TokenCache(store, clock=Clock())
    text = issue(store, Role.ADMIN, "root")
    cache.authenticate(text)
    forged = text[:-4] + ("AAAA" if not text.endswith("AAAA") else "BBBB")
    assert cache.cached(forged) is None
    with pytest.raises(Unauthorized):
        cache.authenticate(forged)
    with pytest.raises(Unauthorized):
        cache.authenticate("not-a-token")


def test_the_cache_stays_small(store: Store) -> None:
    cache = TokenCache(store, max_entries=3, clock=Clock())
    texts = [issue(store, Role.USER, f"u{i}") for i in range(5)]
    for text in texts:
        cache.authenticate(text)
    assert sum(cache.cached(t) is not None for t in texts) <= 3
    assert all(cache.authenticate(t).name == f"u{i}" for i, t in enumerate(texts))
