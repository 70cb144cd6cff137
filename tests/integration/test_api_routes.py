"""The API over real HTTP: a uvicorn server in a thread on a free 127.0.0.1 port, a real SQLite
session behind it, httpx in front. The fixtures here are shared with `test_auth_matrix`."""

from __future__ import annotations

import hashlib
import io
import logging
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from clobi.api.app import create_app, stop_long_polls
from clobi.auth import issue
from clobi.model.auth import Role
from clobi.model.records import JobFilter
from clobi.model.states import JobState
from clobi.remote.http import Connection, Credentials
from clobi.remote.sandbox import RemoteSandbox
from clobi.remote.store import RemoteStore
from clobi.session import Session, Settings, init_session
from clobi.store.base import Store


@dataclass
class Api:
    """A server on a free port over one session, and a direct handle on its store."""

    url: str
    session: Session
    store: Store
    tokens: list[str] = field(default_factory=list)
    opened: list[Any] = field(default_factory=list)  # closed at the end

    def token(
        self, role: Role, name: str = "alice", pool: str = "", expires_s: float | None = None
    ) -> str:
        text = issue(self.store, role, name, pool, expires_s)
        self.tokens.append(text)
        return text

    def http(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client = httpx.Client(base_url=self.url, headers=headers, timeout=30)
        self.opened.append(client)
        return client

    def remote(self, token: str) -> tuple[RemoteStore, RemoteSandbox]:
        credentials = Credentials(token)
        store = RemoteStore(Connection(self.url, credentials))
        sandbox = RemoteSandbox(Connection(self.url, credentials))
        self.opened += [store, sandbox]
        return store, sandbox


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    # Long leases: nothing may expire behind a test's back (the sweeper runs all along).
    settings = Settings(lease_s=60.0, heartbeat_s=1.0, agent_timeout_s=300.0, sweep_interval_s=0.2)
    session = init_session(tmp_path / "session", settings)
    store, sandbox = session.open_store(), session.open_sandbox()
    app = create_app(store, sandbox, session.settings)
    sock = free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="info", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "the server did not start"
    checker = session.open_store()
    api = Api(f"http://127.0.0.1:{sock.getsockname()[1]}", session, checker)
    yield api
    for opened in api.opened:
        opened.close()
    stop_long_polls(app)
    server.should_exit = True
    thread.join(timeout=15)
    sock.close()
    checker.close()
    store.close()


def spec(**extra: Any) -> dict[str, Any]:
    return {"command": ["true"], **extra}


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def submit(api: Api, token: str, **extra: Any) -> list[int]:
    answer = api.http(token).post("/api/v1/jobs", json={"spec": spec(**extra)})
    assert answer.status_code == 200, answer.text
    return [int(i) for i in answer.json()["ids"]]


def join(api: Api, pool: str = "p1", name: str = "agent") -> tuple[int, str]:
    bootstrap = api.token(Role.BOOTSTRAP, f"boot-{pool}", pool, expires_s=600)
    body = {"name": name, "host": "h", "cpus": 4, "memory_bytes": 1 << 30}
    answer = api.http(bootstrap).post("/api/v1/agents/join", json=body)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    api.tokens.append(data["token"])
    return int(data["agent_id"]), str(data["token"])


def claim_body(limit: int = 1, wait_s: float = 0.0) -> dict[str, Any]:
    return {
        "capacity": {"cpus": 4, "memory_bytes": 1 << 30},
        "limit": limit,
        "lease_s": 30,
        "wait_s": wait_s,
    }


# --- server -----------------------------------------------------------------------------------
def test_health_and_ready_answer_without_a_token(api: Api) -> None:
    assert api.http().get("/health").json() == {"status": "ok"}
    assert api.http().get("/ready").status_code == 200


def test_session_info_names_the_caller_and_the_agent_settings(api: Api) -> None:
    info = api.http(api.token(Role.USER, "alice")).get("/api/v1/session").json()
    assert info["principal"] == {"role": "user", "name": "alice", "pool": ""}
    assert info["settings"]["lease_s"] == 60.0


def test_the_openapi_document_lists_every_error_of_every_route(api: Api) -> None:
    doc = api.http().get("/openapi.json").json()
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            assert op.get("description"), f"{method} {path} has no description"
            if path not in ("/health", "/ready"):
                assert "401" in op["responses"], f"{method} {path} does not document 401"
    submit_op = doc["paths"]["/api/v1/jobs"]["post"]
    assert {"401", "403", "404", "422"} <= set(submit_op["responses"])
    assert "HTTPBearer" in doc["components"]["securitySchemes"]


# --- jobs -------------------------------------------------------------------------------------
def test_a_bad_spec_is_refused_with_every_problem_listed(api: Api) -> None:
    body = {"spec": {"command": [], "priority": "high", "colour": 1}}
    answer = api.http(api.token(Role.USER)).post("/api/v1/jobs", json=body)
    assert answer.status_code == 422
    error = answer.json()
    assert error["error"] == "SpecError"
    assert len(error["problems"]) == 3
    assert any(p.startswith("colour") for p in error["problems"])
    assert api.store.list_jobs(JobFilter()) == []


def test_a_malformed_request_answers_422_without_echoing_values(api: Api) -> None:
    secret_env = "s3cr3t-value"
    body = {"spec": spec(), "idempotency_key": "", "input_sha256": secret_env}
    answer = api.http(api.token(Role.USER)).post("/api/v1/jobs", json=body)
    assert answer.status_code == 422
    assert answer.json()["error"] == "UsageError"
    assert secret_env not in answer.text


def test_an_array_submit_gives_one_job_per_member_owned_by_the_token_s_user(api: Api) -> None:
    ids = submit(api, api.token(Role.USER, "alice"), array={"count": 5})
    jobs = api.store.list_jobs(JobFilter(ids=tuple(ids)))
    assert [j.array_index for j in jobs] == [0, 1, 2, 3, 4]
    assert {j.owner for j in jobs} == {"alice"}


def test_an_idempotency_key_is_private_to_its_user(api: Api) -> None:
    alice, bob = api.token(Role.USER, "alice"), api.token(Role.USER, "bob")
    body = {"spec": spec(), "idempotency_key": "k-1"}
    first = api.http(alice).post("/api/v1/jobs", json=body).json()["ids"]
    again = api.http(alice).post("/api/v1/jobs", json=body).json()["ids"]
    bobs = api.http(bob).post("/api/v1/jobs", json=body).json()["ids"]
    assert first == again
    assert bobs != first
    assert len(api.store.list_jobs(JobFilter())) == 2


def test_users_list_and_see_only_their_own_jobs(api: Api) -> None:
    alice, bob = api.token(Role.USER, "alice"), api.token(Role.USER, "bob")
    (mine,) = submit(api, alice)
    (theirs,) = submit(api, bob)
    listed = api.http(alice).get("/api/v1/jobs").json()
    assert [j["id"] for j in listed] == [mine]
    assert api.http(alice).get(f"/api/v1/jobs/{theirs}").status_code == 404
    shown = api.http(alice).get(f"/api/v1/jobs/{mine}").json()
    assert shown["job"]["owner"] == "alice" and shown["spec"]["command"] == ["true"]
    admin = api.token(Role.ADMIN, "root")
    assert len(api.http(admin).get("/api/v1/jobs").json()) == 2


def test_listing_pages_and_filters_by_state_and_tag(api: Api) -> None:
    alice = api.token(Role.USER)
    ids = submit(api, alice, array={"count": 5}, tags=["t1"])
    submit(api, alice, tags=["t2"])
    http = api.http(alice)
    page = http.get("/api/v1/jobs", params={"limit": 2, "after_id": ids[1], "tag": "t1"})
    assert [j["id"] for j in page.json()] == ids[2:4]
    http.post("/api/v1/jobs/kill", json={"ids": [ids[0]]})
    cancelled = http.get("/api/v1/jobs", params={"state": "cancelled"}).json()
    assert [j["id"] for j in cancelled] == [ids[0]]


def test_counts_count_only_the_caller_s_jobs(api: Api) -> None:
    alice, bob = api.token(Role.USER, "alice"), api.token(Role.USER, "bob")
    mine = submit(api, alice, array={"count": 3})
    theirs = submit(api, bob, array={"count": 2})
    counts = api.http(alice).post("/api/v1/jobs/counts", json={"ids": None}).json()["counts"]
    assert counts["queued"] == 3
    both = {"ids": mine + theirs}
    assert api.http(alice).post("/api/v1/jobs/counts", json=both).json()["counts"]["queued"] == 3


def test_a_bulk_action_with_one_foreign_id_changes_nothing(api: Api) -> None:
    alice, bob = api.token(Role.USER, "alice"), api.token(Role.USER, "bob")
    mine = submit(api, alice, array={"count": 2})
    (theirs,) = submit(api, bob)
    answer = api.http(alice).post("/api/v1/jobs/kill", json={"ids": [*mine, theirs]})
    assert answer.status_code == 404
    assert str(theirs) in answer.json()["message"]
    assert api.store.count_states()[JobState.QUEUED] == 3


def test_removing_a_running_job_is_a_conflict_and_removes_nothing(api: Api) -> None:
    alice = api.token(Role.USER)
    ids = submit(api, alice, array={"count": 2})
    agent_id, agent = join(api)
    api.http(agent).post(f"/api/v1/agents/{agent_id}/claim", json=claim_body(limit=1))
    answer = api.http(alice).post("/api/v1/jobs/remove", json={"ids": ids})
    assert answer.status_code == 409
    assert answer.json()["error"] == "Conflict"
    assert len(api.store.list_jobs(JobFilter())) == 2


def test_users_see_events_of_their_own_jobs_only(api: Api) -> None:
    alice, bob = api.token(Role.USER, "alice"), api.token(Role.USER, "bob")
    (mine,) = submit(api, alice)
    (theirs,) = submit(api, bob)
    seen = {e["job_id"] for e in api.http(alice).get("/api/v1/events").json()}
    assert seen == {mine}
    answer = api.http(alice).get("/api/v1/events", params={"job_id": theirs})
    assert answer.status_code == 404


# --- sandboxes --------------------------------------------------------------------------------
def test_an_input_upload_streams_and_returns_its_sha256(api: Api) -> None:
    data = tar_of({"x.txt": b"hello\n"})
    http = api.http(api.token(Role.USER))
    answer = http.put("/api/v1/inputs", content=iter([data[:100], data[100:]]))
    assert answer.status_code == 200, answer.text
    sha = hashlib.sha256(data).hexdigest()
    assert answer.json() == {"key": f"inputs/{sha[:2]}/{sha}.tar", "size": len(data), "sha256": sha}
    assert http.head(f"/api/v1/inputs/{sha}").status_code == 200
    assert http.head(f"/api/v1/inputs/{'0' * 64}").status_code == 404


def test_an_upload_larger_than_any_json_body_goes_through(api: Api) -> None:
    chunk = b"x" * (1 << 20)
    size = 80 * len(chunk)  # beyond the 64 MiB limit of JSON bodies
    _, sandbox = api.remote(api.token(Role.USER))

    class Zeros(io.RawIOBase):
        sent = 0

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            n = min(len(b), size - self.sent, len(chunk))
            b[:n] = chunk[:n]
            self.sent += n
            return n

    blob = sandbox.put_input(io.BufferedReader(Zeros()))
    assert blob.size == size
    assert blob.sha256 == hashlib.sha256(chunk * 80).hexdigest()


def test_a_submit_naming_an_input_that_was_not_uploaded_is_not_found(api: Api) -> None:
    body = {"spec": spec(inputs=["x.txt"]), "input_sha256": "a" * 64}
    answer = api.http(api.token(Role.USER)).post("/api/v1/jobs", json=body)
    assert answer.status_code == 404


def test_a_job_s_output_downloads_whether_inline_or_in_the_sandbox(api: Api) -> None:
    alice = api.token(Role.USER)
    ids = submit(api, alice, array={"count": 2})
    agent_id, agent = join(api)
    agent_http = api.http(agent)
    claims = agent_http.post(f"/api/v1/agents/{agent_id}/claim", json=claim_body(2)).json()
    small, large = tar_of({"stdout": b"inline"}), tar_of({"stdout": b"stored" * 1000})
    a0, a1 = (c["attempt_id"] for c in claims["claims"])
    path = f"/api/v1/agents/{agent_id}/attempts/{a1}/output"
    stored = agent_http.put(path, content=large).json()
    sha = stored["sha256"]
    outcomes = [
        _outcome(a0, output_inline=small),
        _outcome(a1, output_key=stored["key"], output_size=len(large), output_sha256=sha),
    ]
    answer = agent_http.post(f"/api/v1/agents/{agent_id}/finish", json={"outcomes": outcomes})
    assert answer.json()["refused"] == []
    http = api.http(alice)
    for job_id, expected in zip(ids, (small, large), strict=True):
        got = http.get(f"/api/v1/jobs/{job_id}/output")
        assert got.content == expected
        assert got.headers["X-Content-SHA256"] == hashlib.sha256(expected).hexdigest()


def _outcome(attempt_id: int, output_inline: bytes | None = None, **extra: Any) -> dict[str, Any]:
    import base64

    data: dict[str, Any] = {"attempt_id": attempt_id, "state": "succeeded", "exit_code": 0}
    if output_inline is not None:
        data["output_inline"] = base64.b64encode(output_inline).decode()
        data["output_sha256"] = hashlib.sha256(output_inline).hexdigest()
    return {**data, **extra}


# --- agents -----------------------------------------------------------------------------------
def test_a_bootstrap_token_joins_once_into_its_pool(api: Api) -> None:
    bootstrap = api.token(Role.BOOTSTRAP, "b", "gpu-pool", expires_s=600)
    body = {"name": "a", "host": "h", "cpus": 2, "memory_bytes": 1 << 30}
    first = api.http(bootstrap).post("/api/v1/agents/join", json=body)
    assert first.status_code == 200
    assert first.json()["pool"] == "gpu-pool"
    second = api.http(bootstrap).post("/api/v1/agents/join", json=body)
    assert second.status_code == 401
    assert [a.pool for a in api.store.list_agents()] == ["gpu-pool"]


def test_a_long_poll_claim_returns_as_soon_as_a_job_is_submitted(api: Api) -> None:
    agent_id, agent = join(api)
    result: dict[str, Any] = {}

    def wait_for_work() -> None:
        started = time.monotonic()
        answer = api.http(agent).post(
            f"/api/v1/agents/{agent_id}/claim", json=claim_body(wait_s=20)
        )
        result["claims"], result["took"] = answer.json()["claims"], time.monotonic() - started

    waiter = threading.Thread(target=wait_for_work)
    waiter.start()
    time.sleep(0.5)
    (job_id,) = submit(api, api.token(Role.USER))
    waiter.join(timeout=20)
    assert [c["job_id"] for c in result["claims"]] == [job_id]
    assert result["took"] < 3


def test_an_agent_cannot_upload_the_output_of_another_agent_s_attempt(api: Api) -> None:
    submit(api, api.token(Role.USER))
    first_id, first = join(api, name="one")
    second_id, second = join(api, name="two")
    claims = api.http(first).post(f"/api/v1/agents/{first_id}/claim", json=claim_body())
    attempt_id = claims.json()["claims"][0]["attempt_id"]
    for agent_id in (first_id, second_id):
        path = f"/api/v1/agents/{agent_id}/attempts/{attempt_id}/output"
        assert api.http(second).put(path, content=b"x").status_code == 403
    assert not (api.session.root / "sandbox" / "outputs" / f"{attempt_id}.tar").exists()


def test_an_agent_cannot_report_another_attempt_s_output_key(api: Api) -> None:
    submit(api, api.token(Role.USER))
    agent_id, agent = join(api)
    claims = api.http(agent).post(f"/api/v1/agents/{agent_id}/claim", json=claim_body())
    attempt_id = claims.json()["claims"][0]["attempt_id"]
    outcome = _outcome(attempt_id, output_key="outputs/999.tar")
    answer = api.http(agent).post(f"/api/v1/agents/{agent_id}/finish", json={"outcomes": [outcome]})
    assert answer.status_code == 403
    assert api.store.count_states()[JobState.RUNNING] == 1


def test_an_exiting_agent_s_token_is_revoked(api: Api) -> None:
    agent_id, agent = join(api)
    assert api.http(agent).post(f"/api/v1/agents/{agent_id}/exit").status_code == 204
    answer = api.http(agent).post(
        f"/api/v1/agents/{agent_id}/heartbeat", json={"attempt_ids": [], "lease_s": 5}
    )
    assert answer.status_code == 401


def test_tokens_never_reach_the_logs(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    alice = api.token(Role.USER)
    submit(api, alice)
    api.http(alice + "x").get("/api/v1/jobs")
    api.http("clobi_0123456789abcdef_not-a-real-secret-at-all").get("/api/v1/jobs")
    api.http(alice).get("/api/v1/jobs/12345")
    join(api)
    time.sleep(0.2)  # let the server thread write its access log lines
    assert "GET /api/v1/jobs" in caplog.text
    for text in api.tokens:
        secret = text.split("_", 2)[2]  # the secret itself may contain "_"
        assert secret not in caplog.text
    assert "not-a-real-secret" not in caplog.text


def test_a_token_an_admin_revokes_is_refused_at_once_by_this_server(api: Api) -> None:
    admin = api.token(Role.ADMIN, "root")
    user = api.token(Role.USER, "carol")
    carol = api.http(user)
    assert carol.get("/api/v1/jobs").status_code == 200  # now in the server's token cache
    token_id = user.split("_", 2)[1]
    answer = api.http(admin).delete(f"/api/v1/tokens/{token_id}")
    assert answer.json() == {"revoked": True}
    assert carol.get("/api/v1/jobs").status_code == 401
