"""`clobi server` is killed with SIGKILL again and again while clients submit, each submit with
its own idempotency key. A client whose submit fails to get an answer sends the same key again
until it is acknowledged, as a client that cannot know whether its first try was committed must.
Afterwards every key exists exactly once, with exactly the jobs it was acknowledged with.

Everything is real: the server is a subprocess in its own process group on a fixed 127.0.0.1
port, restarted on the same port after every kill; the store is a fresh PostgreSQL database;
the clients are `clobi.Client` on a URL session.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from clobi.api.jobs import scoped_key
from clobi.auth import issue
from clobi.client import Client
from clobi.errors import StoreUnavailable
from clobi.model.auth import Role
from clobi.remote.connect import url_session
from clobi.store.postgres import PostgresStore
from tests.conftest import need
from tests.contract.conftest import PG_URL, pg_database, pg_reachable

pytestmark = pytest.mark.slow

CLIENTS = 4
# Each client submits at least this many keys, and goes on while the storm lasts (up to the
# most), so that every kill meets submits in flight however fast the machine is.
SUBMITS_LEAST, SUBMITS_MOST = 150, 2000
ARRAY_SIZE = 2  # each submit is a 2-job array: a half-created array would show
KILLS = 8
UPTIME_S = (0.3, 1.0)  # how long the server serves between kills
PACE_S = 0.005  # between one client's submits
START_TIMEOUT_S = 30.0
ACK_TIMEOUT_S = 60.0  # how long one key is retried before the test gives up on it
USER = "alice"
SPEC: dict[str, Any] = {"command": ["true"], "array": {"count": ARRAY_SIZE}}


@dataclass
class ServerProcess:
    """`clobi server` on one 127.0.0.1 port (the first start picks it), restartable, in a
    process group of its own; every incarnation appends to one log."""

    db: str
    storage: str
    home: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    incarnations: int = 0

    @property
    def log(self) -> Path:
        return self.home / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "clobi", "server", "--db", self.db],
                cwd=self.home,
                env=_server_env(self.home, self.storage, f"127.0.0.1:{self.port}"),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.incarnations += 1
        self.port = self._served_port(offset)
        self._wait_ready()

    def kill(self) -> None:
        """SIGKILL to the whole process group: no shutdown of any kind."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> int:
        """A clean SIGTERM shutdown; its exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            self.kill()

    def _served_port(self, offset: int) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            with self.log.open("rb") as log:
                log.seek(offset)
                found = re.search(rb"listening on http://127\.0\.0\.1:(\d+)", log.read())
            if found:
                return int(found.group(1))
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            time.sleep(0.02)
        raise AssertionError(f"the server did not start:\n{self.log.read_text()}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.02)
        raise AssertionError(f"the server is not ready:\n{self.log.read_text()}")


def _server_env(home: Path, storage: str, bind: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOBI_")}
    env.update(XDG_CONFIG_HOME=str(home / "config"), XDG_CACHE_HOME=str(home / "cache"))
    return {**env, "CLOBI_STORAGE": storage, "CLOBI_BIND": bind}


def _pg_url(conninfo: str) -> str:
    """`pg_database` names a database by libpq conninfo; `--db` takes a postgresql:// URL."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(conninfo)
    user = quote(str(params.get("user", "")))
    password = params.get("password")
    auth = f"{user}:{quote(str(password))}" if password else user
    host, port = params.get("host", "127.0.0.1"), params.get("port", 5432)
    return f"postgresql://{auth}@{host}:{port}/{params['dbname']}"


@pytest.fixture
def database() -> Iterator[str]:
    need(pg_reachable(), f"PostgreSQL at {PG_URL} (set CLOBI_TEST_PG_URL)")
    with pg_database() as conninfo:
        yield _pg_url(conninfo)


@pytest.fixture
def server(database: str, tmp_path: Path) -> Iterator[ServerProcess]:
    served = ServerProcess(database, f"file://{tmp_path / 'sandbox'}", tmp_path)
    try:
        served.start()
        yield served
    finally:
        served.kill()
    log = served.log.read_text()
    assert "Traceback" not in log and '" 500 ' not in log, log


@dataclass
class Submitter:
    """One client: submits its keys in order, each until acknowledged."""

    client: Client
    name: str
    abandon: threading.Event  # set when the storm failed: stop retrying at once
    acknowledged: dict[str, list[int]] = field(default_factory=dict)
    sent_during: dict[str, tuple[float, float]] = field(default_factory=dict)
    gave_up: set[str] = field(default_factory=set)  # keys the client library gave up on

    def run(self, storm_over: threading.Event) -> None:
        for i in range(SUBMITS_MOST):
            if i >= SUBMITS_LEAST and storm_over.is_set():
                return
            key = f"{self.name}-submit-{i}"
            started = time.monotonic()
            self.acknowledged[key] = self.submit_until_acknowledged(key)
            self.sent_during[key] = (started, time.monotonic())
            time.sleep(PACE_S)

    def submit_until_acknowledged(self, key: str) -> list[int]:
        deadline = time.monotonic() + ACK_TIMEOUT_S
        while True:
            try:
                return self.client.submit(SPEC, idempotency_key=key)
            except StoreUnavailable:  # no answer: maybe committed, maybe not; same key again
                self.gave_up.add(key)
                assert time.monotonic() < deadline, f"{key}: not acknowledged in time"
                assert not self.abandon.is_set(), f"{key}: abandoned, the storm failed"
                time.sleep(0.05)

    def retried(self, kills: list[float]) -> set[str]:
        """Keys sent more than once: those the client library gave up on and this client sent
        again, and those in flight when the server was killed (their answer came from a later
        server, so the client library sent them again)."""
        cut = {k for k, (a, b) in self.sent_during.items() if any(a < t < b for t in kills)}
        return cut | self.gave_up


def kill_repeatedly(server: ServerProcess) -> list[float]:
    """KILLS times: SIGKILL the server after a random time serving, restart it on its port.
    Returns when each killed server was gone."""
    rng = random.Random(1729)
    kills: list[float] = []
    for _ in range(KILLS):
        time.sleep(rng.uniform(*UPTIME_S))
        port = server.port
        server.kill()
        kills.append(time.monotonic())  # from here on, the killed server answers nothing
        server.start()
        assert server.port == port
    return kills


def storm(
    server: ServerProcess, submitters: list[Submitter], abandon: threading.Event
) -> list[float]:
    """The clients submit while the server is killed and restarted; returns the kill times."""
    storm_over = threading.Event()
    with ThreadPoolExecutor(len(submitters) + 1) as pool:
        running = [pool.submit(s.run, storm_over) for s in submitters]
        killer = pool.submit(kill_repeatedly, server)
        try:
            kills = killer.result(timeout=240)
        except BaseException:
            abandon.set()
            raise
        finally:
            storm_over.set()
        for future in running:
            future.result(timeout=120)
    return kills


def test_acknowledged_submits_exist_exactly_once_across_repeated_server_kills(
    server: ServerProcess, tmp_path: Path
) -> None:
    with contextlib.closing(PostgresStore.from_url(server.db)) as store:
        token = issue(store, Role.USER, USER)
    cache = {"XDG_CACHE_HOME": str(tmp_path / "client-cache")}
    abandon = threading.Event()
    submitters = [
        Submitter(Client(url_session(server.url, token, cache)), f"client-{n}", abandon)
        for n in range(CLIENTS)
    ]
    try:
        kills = storm(server, submitters, abandon)
    finally:
        for submitter in submitters:
            submitter.client.close()

    acknowledged = {k: ids for s in submitters for k, ids in s.acknowledged.items()}
    retried = set().union(*(s.retried(kills) for s in submitters))
    assert all(len(s.acknowledged) >= SUBMITS_LEAST for s in submitters)
    # the storm hit submits in flight: clients had to send keys again
    assert len(retried) >= KILLS // 2, f"only {len(retried)} submits were cut off by {KILLS} kills"

    specs, jobs = _audit(server.db)
    assert_each_key_exists_once(acknowledged, specs, jobs)

    # a client retrying any key once more, after the storm, gets the same jobs and adds none
    with Client(url_session(server.url, token, cache)) as client:
        for key in sorted(retried):
            assert client.submit(SPEC, idempotency_key=key) == acknowledged[key]
    assert _audit(server.db) == (specs, jobs)
    assert server.stop() in (0, -signal.SIGTERM), server.log.read_text()
    assert server.incarnations == len(kills) + 1


def assert_each_key_exists_once(
    acknowledged: dict[str, list[int]], specs: dict[int, str], jobs: dict[int, int]
) -> None:
    """One spec per acknowledged key and no other; each with exactly the acknowledged jobs."""
    sent = {scoped_key(USER, k) for k in acknowledged}
    assert len(specs) == len(sent), f"{len(specs)} specs for {len(acknowledged)} keys"
    assert set(specs.values()) == sent, "the stored keys are not the acknowledged ones"
    assert len(jobs) == len(acknowledged) * ARRAY_SIZE, f"{len(jobs)} jobs"
    jobs_of_spec: dict[int, list[int]] = {}
    for job_id, spec_id in sorted(jobs.items()):
        jobs_of_spec.setdefault(spec_id, []).append(job_id)
    for key, ids in acknowledged.items():
        spec_ids = {jobs[i] for i in ids}
        assert len(ids) == ARRAY_SIZE and len(spec_ids) == 1, f"{key}: {ids} of {spec_ids}"
        (spec_id,) = spec_ids
        assert specs[spec_id] == scoped_key(USER, key), f"{key}: jobs of another key"
        assert jobs_of_spec[spec_id] == sorted(ids), f"{key}: its spec has other jobs too"


def _audit(db: str) -> tuple[dict[int, str], dict[int, int]]:
    """What the database holds: spec id -> its (scoped) idempotency key, job id -> spec id."""
    import psycopg

    with psycopg.connect(db) as conn:
        specs: dict[int, str] = dict(conn.execute("SELECT id, idempotency_key FROM specs"))
        jobs: dict[int, int] = dict(conn.execute("SELECT id, spec_id FROM jobs"))
    return specs, jobs
