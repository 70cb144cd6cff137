"""`clobi server` is stateless: a remote agent rides out a `kill -9` and restart of the server
(shorter than its lease) without losing or duplicating a running job, and two server processes
on one PostgreSQL database behave as one server.

Everything is real: servers are subprocesses in process groups of their own on 127.0.0.1, the
store is a fresh PostgreSQL database per test, agents are `clobi agent --join` subprocesses with
bootstrap tokens, and the user is `clobi.Client` on a URL session.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clobi.auth import issue
from clobi.client import Client
from clobi.model.auth import Role
from clobi.model.states import JobState
from clobi.remote.connect import url_session
from clobi.store.postgres import PostgresStore
from tests.acceptance.test_server_crash_storm import ServerProcess, _pg_url, _server_env
from tests.conftest import need
from tests.contract.conftest import PG_URL, pg_database, pg_reachable

pytestmark = pytest.mark.slow

POOL = "remote"
USER = "alice"
# A lease long enough to outlast the outage; heartbeats frequent enough to notice it at once.
SETTINGS: dict[str, float] = {
    "lease_s": 6.0,
    "heartbeat_s": 0.5,
    "agent_timeout_s": 10.0,
    "kill_grace_s": 0.5,
    "sweep_interval_s": 0.2,
    # the restart test's outputs are too big to travel inline: each report uploads first
    "inline_output_max_bytes": 8192,
}
JOB_S = 4.0  # how long each job of the restart test runs
KILL_AFTER_S = 3.0  # how long after the jobs started the server is killed
OUTAGE_S = 3.0  # how long the server stays dead (shorter than the lease)
BIG = 64 << 10  # bytes of each job's declared output


@dataclass
class SessionServer(ServerProcess):
    """A `ServerProcess` serving a session directory (its `[agent]` settings) with explicit
    --db, --storage and --bind flags."""

    session: Path | None = None

    def start(self) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        argv = [sys.executable, "-m", "clobi", "server", "--session", str(self.session)]
        argv += ["--db", self.db, "--storage", self.storage, "--bind", f"127.0.0.1:{self.port}"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=self.home,
                env=_server_env(self.home, self.storage, f"127.0.0.1:{self.port}"),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.incarnations += 1
        self.port = self._served_port(offset)
        self._wait_ready()


@dataclass
class Deployment:
    """A database, a session directory naming it, the servers on it and the agents joined."""

    db: str
    storage: str
    session: Path
    tmp: Path
    servers: list[SessionServer]
    agents: dict[str, subprocess.Popen[bytes]]

    def server(self, name: str) -> SessionServer:
        home = self.tmp / f"server-{name}"
        home.mkdir()
        served = SessionServer(self.db, self.storage, home, session=self.session)
        self.servers.append(served)
        served.start()
        return served

    def token(self, role: Role, name: str, pool: str = "") -> str:
        with contextlib.closing(PostgresStore.from_url(self.db)) as store:
            expires = 3600.0 if role is Role.BOOTSTRAP else None
            return issue(store, role, name, pool, expires)

    def join(self, name: str, url: str, cpus: int) -> subprocess.Popen[bytes]:
        """`clobi agent --join URL` with a fresh bootstrap token in $CLOBI_TOKEN."""
        home = self.tmp / name
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLOBI_")}
        env.update(XDG_CONFIG_HOME=str(home / "config"), XDG_CACHE_HOME=str(home / "cache"))
        env["CLOBI_TOKEN"] = self.token(Role.BOOTSTRAP, f"join-{name}", POOL)
        argv = [sys.executable, "-m", "clobi", "agent", "--join", url]
        argv += ["--cpus", str(cpus), "--name", name]
        with (self.tmp / f"{name}.log").open("wb") as log:
            self.agents[name] = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self.agents[name]

    def client(self, server: SessionServer, token: str) -> Client:
        cache = {"XDG_CACHE_HOME": str(self.tmp / f"client-cache-{server.port}")}
        return Client(url_session(server.url, token, cache))

    def logs(self) -> str:
        texts = [s.log.read_text(errors="replace") for s in self.servers]
        texts += [(self.tmp / f"{n}.log").read_text(errors="replace") for n in self.agents]
        return "\n".join(texts)

    def stop_agent(self, name: str) -> int:
        proc = self.agents[name]
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=30)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    need(pg_reachable(), f"PostgreSQL at {PG_URL} (set CLOBI_TEST_PG_URL)")
    with pg_database() as conninfo:
        db = _pg_url(conninfo)
        storage = f"file://{tmp_path / 'sandbox'}"
        session = tmp_path / "session"
        session.mkdir()
        settings = "\n".join(f"{key} = {value!r}" for key, value in SETTINGS.items())
        (session / "clobi.toml").write_text(
            f'[session]\nstore = "{db}"\nsandbox = "{storage}"\n\n[agent]\n{settings}\n'
        )
        state = Deployment(db, storage, session, tmp_path, [], {})
        try:
            yield state
        finally:
            for proc in state.agents.values():
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            for served in state.servers:
                served.kill()
    for served in state.servers:
        log = served.log.read_text()
        assert "Traceback" not in log and '" 500 ' not in log, log


def wait_for(
    condition: Callable[[], Any], timeout_s: float, what: str, logs: Callable[[], str]
) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{logs()}")


def test_a_remote_agent_survives_a_server_restart_without_losing_or_duplicating_a_job(
    deployment: Deployment,
) -> None:
    server = deployment.server("a")
    user = deployment.token(Role.USER, USER)
    agent = deployment.join("agent-a", server.url, cpus=4)
    script = f"sleep {JOB_S:g}; echo {{index}}; yes {{index}} | head -c {BIG} > big"
    spec = {"command": ["sh", "-c", script], "outputs": ["big"], "array": {"count": 4}}

    client = deployment.client(server, user)
    try:
        ids = client.submit(spec)
        assert len(ids) == 4
        wait_for(
            lambda: client.counts(ids)[JobState.RUNNING] == 4,
            30,
            "all four jobs to run",
            deployment.logs,
        )
        started = max(a.started_at for i in ids for a in client.get(i).attempts)
        # kill while the jobs run; they end during the outage, so the agent reports to nobody
        time.sleep(max(0.0, started + KILL_AFTER_S - time.time()))
        port = server.port
        server.kill()
        killed_at = time.time()
        time.sleep(OUTAGE_S)
        assert agent.poll() is None, deployment.logs()
        server.start()
        back_at = time.time()
        assert server.port == port and server.incarnations == 2
        assert back_at - killed_at < SETTINGS["lease_s"], "the outage outlasted the lease"
        ends = [a.started_at + JOB_S for i in ids for a in client.get(i).attempts]
        assert any(killed_at < end < back_at for end in ends), "no job ended during the outage"

        counts = client.wait(ids, timeout_s=60)
        assert counts[JobState.SUCCEEDED] == 4, (counts, deployment.logs())
        for index, job_id in enumerate(ids):
            view = client.get(job_id)
            assert view.job.state is JobState.SUCCEEDED
            assert view.job.attempts == 1 and view.job.lost_count == 0, view.job
            assert len(view.attempts) == 1, view.attempts
            (attempt,) = view.attempts
            assert attempt.agent_name == "agent-a" and attempt.exit_code == 0, attempt
            assert client.read_output_file(job_id, "stdout") == f"{index}\n".encode()
            assert client.read_output_file(job_id, "big") == (f"{index}\n" * BIG)[:BIG].encode()
        (registered,) = client.agents()
        assert registered.name == "agent-a" and registered.state == "up", registered
        assert agent.poll() is None, deployment.logs()
    finally:
        client.close()
    assert deployment.stop_agent("agent-a") == 0, deployment.logs()


def test_two_servers_on_one_database_behave_as_one(deployment: Deployment) -> None:
    a, b = deployment.server("a"), deployment.server("b")
    assert a.port != b.port
    user = deployment.token(Role.USER, USER)
    via_a, via_b = deployment.client(a, user), deployment.client(b, user)
    try:
        deployment.join("agent-a", a.url, cpus=2)
        deployment.join("agent-b", b.url, cpus=2)
        for client in (via_a, via_b):
            wait_for(
                lambda c=client: {x.name for x in c.agents()} == {"agent-a", "agent-b"},  # type: ignore[misc]
                30,
                "both agents to be seen through both servers",
                deployment.logs,
            )

        def half(tag: str) -> dict[str, Any]:
            command = ["sh", "-c", f"sleep 1; echo {tag}-{{index}}"]
            return {"command": command, "array": {"count": 5}, "tags": [tag]}

        from_a, from_b = via_a.submit(half("a")), via_b.submit(half("b"))
        long_job = via_a.submit({"command": ["sleep", "300"], "tags": ["long"]})
        (long_id,) = long_job

        # the job submitted through A runs, and B kills it
        wait_for(
            lambda: via_b.get(long_id).job.state is JobState.RUNNING,
            30,
            "the long job to run",
            deployment.logs,
        )
        assert via_b.kill([long_id]) == [long_id]
        wait_for(
            lambda: via_a.get(long_id).job.state is JobState.CANCELLED,
            30,
            "the long job to be cancelled",
            deployment.logs,
        )

        for client in (via_a, via_b):
            counts = client.wait(from_a + from_b + long_job, timeout_s=60)
            why = [(j.id, j.state.value, j.reason) for j in client.list(ids=from_a + from_b)]
            assert counts[JobState.SUCCEEDED] == 10, (counts, why, deployment.logs()[-6000:])
            assert counts[JobState.CANCELLED] == 1, counts

        ran_on: set[str] = set()
        for tag, ids, reader in (("a", from_a, via_b), ("b", from_b, via_a)):
            for index, job_id in enumerate(ids):
                view = reader.get(job_id)
                assert view.job.state is JobState.SUCCEEDED and view.job.attempts == 1, view.job
                assert len(view.attempts) == 1, view.attempts
                ran_on.add(view.attempts[0].agent_name)
                # outputs uploaded through one server download through the other
                assert reader.read_output_file(job_id, "stdout") == f"{tag}-{index}\n".encode()
        assert ran_on == {"agent-a", "agent-b"}, ran_on

        def listing(client: Client) -> list[tuple[int, str, int, tuple[str, ...]]]:
            jobs = client.list(limit=None)
            return [(j.id, j.state.value, j.attempts, j.tags) for j in jobs]

        listed = listing(via_a)
        assert listed == listing(via_b)
        assert [j for j, *_ in listed] == sorted(from_a + from_b + long_job)
        assert via_a.list(tags=["b"], limit=None) == via_b.list(tags=["b"], limit=None)
        assert via_a.counts() == via_b.counts()
        assert via_a.get(long_id) == via_b.get(long_id)
        for name in ("agent-a", "agent-b"):
            assert deployment.agents[name].poll() is None, deployment.logs()
    finally:
        via_a.close()
        via_b.close()
    for name in ("agent-a", "agent-b"):
        assert deployment.stop_agent(name) == 0, deployment.logs()
