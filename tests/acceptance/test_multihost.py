"""A shared session across machines: `clobi server` on this machine with a fresh PostgreSQL
database and a SeaweedFS bucket, two agents on two other "machines" (network namespaces that
reach nothing but the server's address over their own veth pair), and a remote user.

Phase one: a 100-job array with inputs runs on both agents; every output comes back through
the server (from S3) with the checksum the job must produce. Phase two: one agent's machine
is killed (`kill -9` of every process in its namespace) while it runs jobs; after their
leases, those jobs run again on the other agent, each with one lost and one succeeded attempt.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from clobi.client import Client
from clobi.model.states import AttemptState, JobState
from clobi.session import load_session
from tests.conftest import need
from tests.contract.conftest import PG_URL, pg_database, pg_reachable
from tests.netns import Host, Network, hosts_or_skip, isolated_hosts
from tests.s3server import ACCESS_KEY, REGION, SECRET_KEY, S3Server, list_keys, s3_server_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ARRAY_SIZE = 100
LONG_JOBS = 12
LONG_JOB_S = 4
AGENT_CPUS = 4
POOL = "edge"
SESSION_ERROR = 6
# Short leases so that a dead machine's jobs come back within seconds. Outputs above 8 KiB go
# to the S3 bucket instead of inline into PostgreSQL: the array's outputs are ~16 KiB.
AGENT_SETTINGS = {
    "lease_s": 3.0,
    "heartbeat_s": 0.5,
    "agent_timeout_s": 5.0,
    "kill_grace_s": 0.5,
    "sweep_interval_s": 0.2,
    "inline_output_max_bytes": 8192,
}
# The array's job: a derived file (a header naming the index, then the input data) and the
# job's own checksum of it.
JOB_SCRIPT = """\
set -eu
mkdir -p out
printf 'index %s\\n' "$1" > out/derived.bin
cat data.bin >> out/derived.bin
sha256sum out/derived.bin > out/derived.sha256
"""
TOKEN_RE = re.compile(r"clobi_[0-9a-f]{16}_[A-Za-z0-9_-]{16,}")  # any token at all


def expected_output(index: int, data: bytes) -> bytes:
    return b"index %d\n" % index + data


# --- processes ------------------------------------------------------------------------------
def base_env(home: Path, **extra: str) -> dict[str, str]:
    """This environment without Clobi or AWS settings, with config and cache under `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOBI_", "AWS_", "XDG_"))}
    env.update(XDG_CONFIG_HOME=str(home / "config"), XDG_CACHE_HOME=str(home / "cache"))
    return {**env, **extra}


def clobi(
    *args: str | Path,
    env: dict[str, str],
    code: int = 0,
    stdin: str | None = None,
    prefix: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """Run the CLI (inside a namespace with `prefix`) and check its exit code."""
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "clobi", *map(str, args)],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 30) -> int:
    """SIGTERM, then SIGKILL after `timeout_s`; the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(timeout=10)


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


# --- the cluster ----------------------------------------------------------------------------
@dataclass
class Cluster:
    """The server on this machine and what a user of it has."""

    url: str
    admin: str
    home: Path
    bucket: str
    s3: S3Server
    log: Path
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def env(self, token: str | None = None) -> dict[str, str]:
        return base_env(self.home, **({"CLOBI_TOKEN": token} if token else {}))

    def token(self, role: str, *extra: str) -> str:
        args = ("token", "create", "--role", role, *extra, "--session", self.url)
        return clobi(*args, env=self.env(self.admin)).stdout.strip()

    def start_agent(self, host: Host, name: str, token_file: Path) -> None:
        """`clobi agent --join` on `host`, with its own config and cache folders."""
        home = self.home.parent / name
        argv = host.command(
            *(sys.executable, "-m", "clobi", "agent", "--join", self.url),
            *("--token-file", str(token_file), "--cpus", str(AGENT_CPUS), "--name", name),
        )
        with (home.parent / f"{name}.log").open("wb") as log:
            self.agents[name] = subprocess.Popen(
                argv, env=base_env(home), stdout=log, stderr=subprocess.STDOUT
            )

    def agent_logs(self) -> str:
        return "".join(
            (self.home.parent / f"{name}.log").read_text(errors="replace") for name in self.agents
        )


@pytest.fixture
def network() -> Iterator[Network]:
    hosts_or_skip(2)
    with isolated_hosts(2) as net:
        yield net


@pytest.fixture
def cluster(request: pytest.FixtureRequest, network: Network, tmp_path: Path) -> Iterator[Cluster]:
    """`clobi server` on a fresh database and bucket, listening only on this machine's end of
    the first veth pair; its agents are killed and the server stopped at the end."""
    need(pg_reachable(), f"PostgreSQL at {PG_URL} (set CLOBI_TEST_PG_URL)")
    s3_server = s3_server_for(request)
    bucket = s3_server.new_bucket()
    with pg_database(template=False) as conninfo:
        db = _database_url(conninfo)
        storage = f"s3://{bucket}?endpoint={s3_server.endpoint}&region={REGION}"
        session = _session_dir(tmp_path / "session", db, storage)
        home = tmp_path / "user"
        admin = clobi(
            "token", "create", "--role", "admin", "--session", session, env=base_env(home)
        ).stdout.strip()
        with _server(session, db, storage, network.server_address, tmp_path) as (url, log):
            state = Cluster(url, admin, home, bucket, s3_server, log)
            try:
                yield state
            finally:
                for proc in state.agents.values():
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    proc.wait(timeout=10)


def _database_url(conninfo: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    dbname = conninfo_to_dict(conninfo)["dbname"]
    return urlsplit(PG_URL)._replace(path=f"/{dbname}").geturl()


def _session_dir(root: Path, db: str, storage: str) -> Path:
    """A session folder naming the shared engines and the short leases; the server reads
    its settings there, and `clobi token create` its store."""
    root.mkdir()
    settings = "\n".join(f"{key} = {value!r}" for key, value in AGENT_SETTINGS.items())
    (root / "clobi.toml").write_text(
        f'[session]\nstore = "{db}"\nsandbox = "{storage}"\n\n[agent]\n{settings}\n'
    )
    return root


@contextlib.contextmanager
def _server(
    session: Path, db: str, storage: str, address: str, tmp_path: Path
) -> Iterator[tuple[str, Path]]:
    log_path = tmp_path / "server.log"
    aws = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }
    argv = [sys.executable, "-m", "clobi", "server", "--session", str(session)]
    argv += ["--db", db, "--storage", storage, "--bind", f"{address}:0"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv, env=base_env(tmp_path / "server", **aws), stdout=log, stderr=subprocess.STDOUT
        )
    try:
        yield _wait_for_url(log_path, proc), log_path
    finally:
        # uvicorn ends by re-raising the signal it was stopped with, after a clean shutdown
        assert stop(proc) in (0, -signal.SIGTERM), log_path.read_text()
    assert "Traceback" not in log_path.read_text()


def _wait_for_url(log: Path, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.search(r"listening on (http://\S+)", log.read_text())
        if found:
            return found.group(1)
        assert proc.poll() is None, log.read_text()
        time.sleep(0.05)
    raise AssertionError(f"the server did not start:\n{log.read_text()}")


# --- the test -------------------------------------------------------------------------------
def test_two_machines_run_an_array_and_a_dead_machine_s_jobs_finish_on_the_other(
    cluster: Cluster, network: Network, tmp_path: Path
) -> None:
    user_token = cluster.token("user", "--name", "alice")
    clobi("login", cluster.url, env=cluster.env(), stdin=user_token + "\n")
    machines = dict(zip(("agent-a", "agent-b"), network.hosts, strict=True))
    bootstrap_files = {}
    for name, host in machines.items():
        bootstrap_files[name] = tmp_path / f"{name}.bootstrap"
        _write_secret(bootstrap_files[name], cluster.token("bootstrap", "--pool", POOL))
        cluster.start_agent(host, name, bootstrap_files[name])

    with Client(load_session(cluster.url, token=user_token)) as client:
        wait_for(lambda: _live_agents(client) == set(machines), 30, "both agents to join")
        assert {a.pool for a in client.agents()} == {POOL}
        _an_array_runs_on_both_machines(cluster, client, tmp_path)

        # a bootstrap token works once: joining again with agent-a's is refused
        again = clobi(
            *("agent", "--join", cluster.url, "--token-file", bootstrap_files["agent-a"]),
            env=base_env(tmp_path / "again"),
            code=SESSION_ERROR,
            prefix=tuple(machines["agent-b"].command()),
        )
        assert "already used" in again.stderr
        assert _live_agents(client) == set(machines)

        _a_dead_machine_s_jobs_finish_on_the_other(cluster, client, machines["agent-a"], tmp_path)

    assert stop(cluster.agents["agent-b"]) == 0, cluster.agent_logs()
    logs = cluster.log.read_text() + cluster.agent_logs()
    for token in (cluster.admin, user_token):
        assert token.split("_", 2)[2] not in logs  # the secret may contain "_"
    assert not TOKEN_RE.search(logs)


def _an_array_runs_on_both_machines(cluster: Cluster, client: Client, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    data = os.urandom(16 << 10)
    (work / "data.bin").write_bytes(data)
    (work / "job.sh").write_text(JOB_SCRIPT)
    (work / "job.toml").write_text(
        'command = ["sh", "job.sh", "{index}"]\n'
        'inputs = ["job.sh", "data.bin"]\n'
        'outputs = ["out/*"]\n'
        f"[array]\ncount = {ARRAY_SIZE}\n"
    )
    submitted = clobi("submit", work / "job.toml", "--session", cluster.url, env=cluster.env())
    ids = [int(i) for i in submitted.stdout.split()]
    assert len(ids) == ARRAY_SIZE

    waited = clobi("wait", "--session", cluster.url, "--timeout", "90", env=cluster.env())
    assert f"{ARRAY_SIZE} succeeded" in waited.stdout, waited.stdout

    # one download through the CLI, every one through the Python client
    out = tmp_path / "cli-out"
    clobi("output", str(ids[0]), "--to", out, "--session", cluster.url, env=cluster.env())
    assert (out / "out" / "derived.bin").read_bytes() == expected_output(0, data)
    ran_on = set()
    for job_id in ids:
        view = client.get(job_id)
        index = view.job.array_index
        assert index is not None
        out = tmp_path / "out" / str(job_id)
        client.output(job_id, out)
        digest = hashlib.sha256(expected_output(index, data)).hexdigest()
        assert hashlib.sha256((out / "out" / "derived.bin").read_bytes()).hexdigest() == digest
        assert (out / "out" / "derived.sha256").read_text().split()[0] == digest
        assert [a.state for a in view.attempts] == [AttemptState.SUCCEEDED]
        ran_on.add(view.attempts[0].agent_name)
    assert ran_on == {"agent-a", "agent-b"}

    # the input was stored once, and the outputs went to the bucket, not inline
    assert len(list_keys(cluster.s3.endpoint, cluster.bucket, "inputs/")) == 1
    assert len(list_keys(cluster.s3.endpoint, cluster.bucket, "outputs/")) == ARRAY_SIZE


def _a_dead_machine_s_jobs_finish_on_the_other(
    cluster: Cluster, client: Client, victim: Host, tmp_path: Path
) -> None:
    spec = tmp_path / "long.toml"
    spec.write_text(f'command = ["sleep", "{LONG_JOB_S}"]\n[array]\ncount = {LONG_JOBS}\n')
    submitted = clobi("submit", spec, "--session", cluster.url, env=cluster.env())
    ids = [int(i) for i in submitted.stdout.split()]

    def busy() -> set[str]:
        return {a.name for a in client.agents() if a.running > 0}

    # kill the victim's machine while it runs jobs (they take LONG_JOB_S; this takes < 1 s)
    wait_for(lambda: busy() == {"agent-a", "agent-b"}, 20, "both agents to run long jobs")
    killed_at = time.time()
    victim.kill_all()
    assert cluster.agents["agent-a"].wait(timeout=10) == -signal.SIGKILL
    assert not victim.pids()
    victim_id = next(a.id for a in client.agents(include_gone=True) if a.name == "agent-a")
    on_victim = _started_on(client, victim_id, ids)

    counts = client.wait(ids, timeout_s=60)
    assert counts[JobState.SUCCEEDED] == LONG_JOBS, counts
    lost_jobs = set()
    for job_id in ids:
        attempts = client.get(job_id).attempts
        succeeded = [a for a in attempts if a.state is AttemptState.SUCCEEDED]
        lost = [a for a in attempts if a.state is AttemptState.LOST]
        assert len(succeeded) == 1, attempts
        assert len(lost) + 1 == len(attempts), attempts  # nothing else: no failure, no retry
        assert all(a.agent_name == "agent-a" for a in lost), attempts
        if lost:
            lost_jobs.add(job_id)
            assert len(lost) == 1 and succeeded[0].agent_name == "agent-b", attempts
            assert attempts[-1] is succeeded[0], attempts
            # requeued once the lease ran out (it was renewed at most a heartbeat earlier)
            assert lost[0].ended_at is not None
            assert lost[0].ended_at - killed_at < AGENT_SETTINGS["lease_s"] + 2, attempts
    assert on_victim and on_victim == lost_jobs

    # the dead agent is gone once it has missed its heartbeats for the agent timeout
    wait_for(
        lambda: _live_agents(client) == {"agent-b"},
        AGENT_SETTINGS["agent_timeout_s"] + 10,
        "agent-a to be marked gone",
    )


def _started_on(client: Client, agent_id: int, job_ids: list[int]) -> set[int]:
    """Jobs among `job_ids` with an attempt started on the agent (from the event log)."""
    found, after = set(), 0
    while page := client.events(after_id=after):
        after = page[-1].id
        found |= {
            e.job_id
            for e in page
            if e.kind == "started" and e.agent_id == agent_id and e.job_id in job_ids
        }
    return found


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text + "\n")


def _live_agents(client: Client) -> set[str]:
    return {a.name for a in client.agents()}
