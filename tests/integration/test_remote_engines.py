"""`Client` and the agent, unchanged, against a URL session: the remote store and sandbox
engines over a real server (uvicorn in a thread on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import os
import select
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clobi.agent.loop import Agent, AgentOptions
from clobi.client import Client
from clobi.errors import NotFound, SandboxError
from clobi.model.auth import Role
from clobi.model.states import JobState
from clobi.session import Session, load_session
from tests.conftest import make_agent
from tests.integration.test_api_routes import Api, api

__all__ = ["api"]


def url_session(api: Api, token: str, monkeypatch: pytest.MonkeyPatch, tmp: Path) -> Session:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp / "cache"))
    return load_session(api.url, token=token)


@pytest.fixture
def client(api: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Client]:
    session = url_session(api, api.token(Role.USER, "alice"), monkeypatch, tmp_path)
    with Client(session) as client:
        api.opened.append(client.sandbox)
        yield client


@pytest.fixture
def agent(api: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Agent]:
    bootstrap = api.token(Role.BOOTSTRAP, "boot", "remote", expires_s=600)
    session = url_session(api, bootstrap, monkeypatch, tmp_path)
    session.work_dir.mkdir(parents=True, exist_ok=True)
    store, sandbox = session.open_store(), session.open_sandbox()
    agent = Agent(session, store, sandbox, AgentOptions(cpus=2, memory_bytes=1 << 30))
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    yield agent
    agent.draining.set()
    thread.join(timeout=30)
    store.close()
    api.opened.append(sandbox)


def test_a_url_session_takes_its_settings_from_the_server(
    api: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    session = url_session(api, api.token(Role.USER), monkeypatch, tmp_path)
    assert session.settings.lease_s == 60.0
    assert session.store_url == api.url
    assert "clobi_" not in repr(session)


def test_the_client_submits_lists_and_controls_jobs_over_http(client: Client) -> None:
    ids = client.submit({"command": ["true"], "array": {"count": 3}, "tags": ["t"]})
    assert [j.id for j in client.list(tags=["t"])] == ids
    view = client.get(ids[0])
    assert view.job.owner == "alice" and view.spec.command == ("true",)
    assert client.kill(ids[:1]) == ids[:1]
    assert client.counts(ids)[JobState.CANCELLED] == 1
    assert client.retry(ids[:1]) == ids[:1]
    assert client.remove(ids) == ids
    with pytest.raises(NotFound):
        client.get(ids[0])


def test_a_retried_submit_with_the_same_key_creates_nothing_new(client: Client) -> None:
    first = client.submit({"command": ["true"]}, idempotency_key="once")
    assert client.submit({"command": ["true"]}, idempotency_key="once") == first
    assert len(client.list()) == 1


def test_inputs_round_trip_and_a_corrupted_download_is_detected(
    api: Api, client: Client, tmp_path: Path
) -> None:
    (tmp_path / "in.txt").write_bytes(os.urandom(100_000))
    (job_id,) = client.submit({"command": ["true"], "inputs": ["in.txt"]}, base_dir=tmp_path)
    _, sha = client.store.job_spec(job_id)
    assert sha is not None and client.sandbox.has_input(sha)
    _, agent_sandbox = api.remote(api.token(Role.ADMIN, "root"))
    with agent_sandbox.open_input(sha) as src:
        assert hashlib.sha256(src.read()).hexdigest() == sha
    stored = api.session.root / "sandbox" / "inputs" / sha[:2] / f"{sha}.tar"
    stored.write_bytes(stored.read_bytes()[:-1] + b"!")
    with pytest.raises(SandboxError, match="expected"), agent_sandbox.open_input(sha) as src:
        src.read()


def test_a_remote_agent_runs_jobs_and_uploads_large_outputs(
    api: Api, agent: Agent, client: Client
) -> None:
    big = 2 * client.session.settings.inline_output_max_bytes
    script = f"head -c {big} /dev/zero | tr '\\\\0' x; echo; echo {{index}}"
    ids = client.submit({"command": script, "shell": True, "array": {"count": 2}})
    counts = client.wait(ids, timeout_s=60)
    assert counts[JobState.SUCCEEDED] == 2, [client.get(i).job.reason for i in ids]
    out = client.read_output_file(ids[1])
    assert len(out) == big + 3 and out.endswith(b"\n1\n")
    assert len(list((api.session.root / "sandbox" / "outputs").glob("*.tar"))) == 2
    assert [a.pool for a in client.agents()] == ["remote"]


def test_an_idle_remote_agent_is_woken_by_a_submit(api: Api, client: Client) -> None:
    bootstrap = api.token(Role.BOOTSTRAP, "boot", "p", expires_s=600)
    store, _ = api.remote(bootstrap)
    agent_id = store.register_agent(make_agent())
    wakeup = store.listen(f"agent-{agent_id}")
    assert wakeup is not None
    time.sleep(0.3)  # the long-poll is waiting
    client.submit({"command": ["true"]})
    readable, _, _ = select.select([wakeup.fileno()], [], [], 5)
    assert readable and wakeup.rang()
