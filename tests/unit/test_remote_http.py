"""The remote engines' HTTP edge: server errors come back as Clobi's classes with the server's
message, idempotent calls are retried, and tokens never appear in what is raised."""

from __future__ import annotations

import socket
from collections.abc import Callable

import httpx
import pytest

from clobi import errors
from clobi.remote import http as remote_http
from clobi.remote.http import Connection, Credentials, normalize_url

TOKEN = "clobi_0123456789abcdef_" + "S" * 43


def connection(handler: Callable[[httpx.Request], httpx.Response]) -> Connection:
    return Connection(
        "http://server.test", Credentials(TOKEN), transport=httpx.MockTransport(handler)
    )


def error(
    status: int, name: str, message: str, problems: list[str] | None = None
) -> httpx.Response:
    body = {"error": name, "message": message, "problems": problems or []}
    return httpx.Response(status, json=body)


@pytest.mark.parametrize(
    ("status", "name", "cls"),
    [
        (401, "Unauthorized", errors.Unauthorized),
        (403, "Forbidden", errors.Forbidden),
        (404, "NotFound", errors.NotFound),
        (409, "Conflict", errors.Conflict),
        (409, "StaleAttempt", errors.StaleAttempt),
        (503, "StoreUnavailable", errors.StoreUnavailable),
        (500, "SandboxError", errors.SandboxError),
        (404, "", errors.NotFound),  # not one of ours: by status
    ],
)
def test_server_errors_come_back_as_the_same_clobi_errors(
    status: int, name: str, cls: type[errors.ClobiError]
) -> None:
    conn = connection(lambda _r: error(status, name, "job 7: no such job"))
    with pytest.raises(cls) as raised:
        conn.call("GET", "/jobs/7")
    assert type(raised.value) is cls
    assert "job 7: no such job" in raised.value.message or not name


def test_a_spec_error_keeps_every_problem() -> None:
    conn = connection(lambda _r: error(422, "SpecError", "2 problems", ["a: bad", "b: worse"]))
    with pytest.raises(errors.SpecError) as raised:
        conn.call("POST", "/jobs", json={})
    assert raised.value.problems == ["a: bad", "b: worse"]


def test_idempotent_calls_are_retried_through_a_busy_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(remote_http, "BACKOFF_S", 0.001)
    answers = [error(503, "StoreUnavailable", "busy"), httpx.Response(200, json={"ok": 1})]
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return answers.pop(0)

    assert connection(handler).call("GET", "/jobs", idempotent=True) == {"ok": 1}
    assert len(sent) == 2
    assert sent[0].headers["Authorization"] == f"Bearer {TOKEN}"


def test_other_calls_are_not_repeated_after_the_server_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(remote_http, "BACKOFF_S", 0.001)
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return error(503, "StoreUnavailable", "busy")

    with pytest.raises(errors.StoreUnavailable):
        connection(handler).call("POST", "/jobs/kill", json={"ids": [1]})
    assert len(sent) == 1


def test_an_unreachable_server_is_a_store_unavailable_error_without_the_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(remote_http, "BACKOFF_S", 0.001)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens on it once closed
    conn = Connection(f"http://127.0.0.1:{port}", Credentials(TOKEN))
    with pytest.raises(errors.StoreUnavailable) as raised:
        conn.call("GET", "/jobs", idempotent=True)
    conn.close()
    assert "cannot connect" in raised.value.message
    assert TOKEN not in raised.value.message and "S" * 43 not in repr(raised.value)


def test_credentials_never_show_their_token() -> None:
    assert TOKEN not in repr(Credentials(TOKEN))


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        ("https://Clobi.Example.org/", "https://clobi.example.org"),
        ("http://h:8/x/", "http://h:8/x"),
    ],
)
def test_server_urls_are_normalised(given: str, normal: str) -> None:
    assert normalize_url(given) == normal


def test_a_url_that_is_not_http_is_a_session_error() -> None:
    with pytest.raises(errors.SessionError):
        normalize_url("ftp://host")


def test_every_request_has_a_timeout() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={})

    conn = connection(handler)
    conn.call("GET", "/jobs")
    conn.send(conn.request("GET", "/inputs/x"), idempotent=True)
    assert all(r.extensions["timeout"]["read"] for r in sent)
