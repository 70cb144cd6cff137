"""The remote engines' HTTP edge: server errors come back as Clobi's classes with the server's
message, idempotent calls are retried, and tokens never appear in what is raised; JSON calls
keep their connection alive, and replace one the server closed without sending twice."""

from __future__ import annotations

import contextlib
import http.server
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

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


# --- JSON calls over kept-alive http.client connections (no transport given) ------------------
class Script:
    """What a little HTTP/1.1 server answers, and what it saw: (connection, method, path,
    headers, body) per request."""

    def __init__(self, answers: list[tuple[int, Any]]) -> None:
        self.answers = answers
        self.seen: list[tuple[int, str, str, dict[str, str], bytes]] = []
        self.close_idle_after_s: float | None = None
        self.delay_s = 0.0


@contextlib.contextmanager
def serving(script: Script) -> Iterator[str]:
    connections = itertools.count()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            self.number = next(connections)
            if script.close_idle_after_s is not None:
                self.request.settimeout(script.close_idle_after_s)

        def handle_one(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            script.seen.append((self.number, self.command, self.path, dict(self.headers), body))
            time.sleep(script.delay_s)
            status, payload = script.answers.pop(0) if script.answers else (200, {})
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = handle_one

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a connection it timed out or that the client broke off

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_json_calls_reuse_one_kept_alive_connection() -> None:
    script = Script([(200, {"a": 1}), (204, None)])
    with serving(script) as url:
        conn = Connection(url, Credentials(TOKEN))
        assert conn.call("POST", "/jobs", json={"spec": {"x": "é"}}) == {"a": 1}
        assert conn.call("GET", "/agents", params={"include_gone": True}) is None
        conn.close()
    (n1, m1, p1, h1, b1), (n2, m2, p2, h2, _) = script.seen
    assert n1 == n2  # one connection
    assert (m1, p1, json.loads(b1)) == ("POST", "/api/v1/jobs", {"spec": {"x": "é"}})
    assert (m2, p2) == ("GET", "/api/v1/agents?include_gone=true")  # as httpx encodes it
    assert h1["Authorization"] == h2["Authorization"] == f"Bearer {TOKEN}"
    assert h1["Content-Type"] == "application/json"


def test_a_connection_the_server_closed_while_idle_is_replaced_without_repeating_a_call() -> None:
    script = Script([(200, {"n": 1}), (200, {"n": 2})])
    script.close_idle_after_s = 0.05
    with serving(script) as url:
        conn = Connection(url, Credentials(TOKEN))
        assert conn.call("POST", "/agents/1/finish", json={}) == {"n": 1}
        time.sleep(0.3)  # the server hangs up on the idle connection
        assert conn.call("POST", "/agents/1/finish", json={}) == {"n": 2}
        conn.close()
    assert [s[0] for s in script.seen] == [0, 1]  # each sent once, the second on a new one


def test_errors_of_direct_calls_are_the_server_s_clobi_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(remote_http, "BACKOFF_S", 0.001)
    script = Script(
        [
            (404, {"error": "NotFound", "message": "job 7: no such job", "problems": []}),
            (422, {"error": "SpecError", "message": "2", "problems": ["a: bad", "b: worse"]}),
            (503, {"error": "StoreUnavailable", "message": "busy", "problems": []}),
            (200, {"ok": 1}),
            (503, {"error": "StoreUnavailable", "message": "busy", "problems": []}),
        ]
    )
    with serving(script) as url:
        conn = Connection(url, Credentials(TOKEN))
        with pytest.raises(errors.NotFound, match="job 7: no such job"):
            conn.call("GET", "/jobs/7")
        with pytest.raises(errors.SpecError) as raised:
            conn.call("POST", "/jobs", json={})
        assert raised.value.problems == ["a: bad", "b: worse"]
        assert conn.call("GET", "/jobs", idempotent=True) == {"ok": 1}  # retried once
        with pytest.raises(errors.StoreUnavailable, match="busy"):
            conn.call("POST", "/jobs/kill", json={"ids": [1]})  # not repeated
        conn.close()
    assert len(script.seen) == 5


def test_a_direct_call_without_an_answer_in_time_is_store_unavailable() -> None:
    script = Script([(200, {})])
    script.delay_s = 0.5
    with serving(script) as url:
        conn = Connection(url, Credentials(TOKEN))
        with pytest.raises(errors.StoreUnavailable, match="no answer in time") as raised:
            conn.call("POST", "/agents/1/heartbeat", json={}, timeout_s=0.1)
        conn.close()
    assert TOKEN not in str(raised.value)


def test_closing_a_connection_breaks_off_a_call_in_flight() -> None:
    script = Script([(200, {"rang": False})])
    script.delay_s = 5.0
    failed: list[BaseException] = []
    with serving(script) as url:
        conn = Connection(url, Credentials(TOKEN))

        def poll() -> None:
            try:
                conn.call("POST", "/agents/1/wait", timeout_s=30)
            except errors.StoreUnavailable as exc:
                failed.append(exc)

        thread = threading.Thread(target=poll)
        thread.start()
        time.sleep(0.2)
        started = time.monotonic()
        conn.close()
        thread.join(timeout=5)
        assert not thread.is_alive() and time.monotonic() - started < 2
    assert len(failed) == 1


def test_threads_sharing_a_connection_each_get_their_own_answer() -> None:
    script = Script([(200, {"i": i}) for i in range(40)])
    script.delay_s = 0.01
    with serving(script) as url:
        conn = Connection(url, Credentials(TOKEN))
        got: list[Any] = []
        threads = [
            threading.Thread(target=lambda: got.extend(conn.call("GET", "/x") for _ in range(10)))
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        conn.close()
    assert sorted(g["i"] for g in got) == list(range(40))
