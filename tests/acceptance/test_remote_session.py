"""A shared session as a team uses it: `clobi server` on a free port, tokens, `clobi login`, a
user submitting through the CLI against the URL, and a remote agent that joins with a bootstrap
token. Everything runs as real processes on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from tests.acceptance.harness import fast_session

pytestmark = pytest.mark.slow

SESSION_ERROR = 6


def user_env(home: Path, token: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a user of this machine (config and cache in the test's folder)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOBI_")}
    env.update(XDG_CONFIG_HOME=str(home / "config"), XDG_CACHE_HOME=str(home / "cache"))
    if token is not None:
        env["CLOBI_TOKEN"] = token
    return {**env, **extra}


@dataclass
class Server:
    url: str
    log: Path
    admin: str
    home: Path

    def env(self, token: str | None = None, **extra: str) -> dict[str, str]:
        return user_env(self.home, token, **extra)


def clobi(
    *args: str | Path, env: dict[str, str], code: int = 0, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "clobi", *map(str, args)],
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


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(timeout=10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    session = fast_session(tmp_path / "session")
    home, log_path = tmp_path / "home", tmp_path / "server.log"
    admin = clobi(
        "token", "create", "--role", "admin", "--session", session.root, env=user_env(home)
    ).stdout.strip()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clobi", "server", "--session", str(session.root)],
            env=user_env(home, CLOBI_BIND="127.0.0.1:0"),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Server(_wait_for_url(log_path, proc), log_path, admin, home)
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


def test_a_remote_user_and_a_remote_agent_run_an_array_with_inputs(
    server: Server, tmp_path: Path
) -> None:
    admin = server.env(server.admin)
    user_token = clobi(
        "token", "create", "--role", "user", "--name", "alice", "--session", server.url, env=admin
    ).stdout.strip()
    bootstrap = clobi(
        "token",
        "create",
        "--role",
        "bootstrap",
        "--pool",
        "remote",
        "--session",
        server.url,
        env=admin,
    ).stdout.strip()

    # the user logs in once; later commands find the token by the URL
    clobi("login", server.url, env=server.env(), stdin=user_token + "\n")
    credentials = tmp_path / "home" / "config" / "clobi" / "credentials.toml"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    user = server.env()

    work = tmp_path / "work"
    work.mkdir()
    data = os.urandom(3 << 20)
    (work / "data.bin").write_bytes(data)
    (work / "job.toml").write_text(
        'command = ["sh", "-c", "mkdir -p out && sha256sum data.bin > out/sum && env > out/env"]\n'
        'inputs = ["data.bin"]\n'
        'outputs = ["out/*"]\n'
        "[array]\ncount = 20\n"
    )
    ids = [
        int(i)
        for i in clobi(
            "submit", work / "job.toml", "--session", server.url, env=user
        ).stdout.split()
    ]
    assert len(ids) == 20

    agent_log = tmp_path / "agent.log"
    with agent_log.open("wb") as log:
        agent = subprocess.Popen(
            [sys.executable, "-m", "clobi", "agent", "--join", server.url, "--cpus", "2"],
            env=server.env(bootstrap),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        waited = clobi("wait", "--session", server.url, "--timeout", "120", env=user)
        assert "20 succeeded" in waited.stdout
        expected = hashlib.sha256(data).hexdigest()
        for job_id in ids:
            out = tmp_path / "out" / str(job_id)
            clobi("output", job_id, "--to", out, "--session", server.url, env=user)
            assert (out / "out" / "sum").read_text().split()[0] == expected
            assert "clobi_" not in (out / "out" / "env").read_text()  # no token reaches jobs

        # the bootstrap token was spent by the join: a second join is refused
        again = clobi("agent", "--join", server.url, env=server.env(bootstrap), code=SESSION_ERROR)
        assert "already used" in again.stderr

        agents = json.loads(clobi("agents", "--session", server.url, "--json", env=user).stdout)
        assert [a["pool"] for a in agents] == ["remote"]
    finally:
        assert stop(agent) == 0, agent_log.read_text()

    logs = server.log.read_text() + agent_log.read_text()
    for token in (server.admin, user_token, bootstrap):
        assert token.split("_", 2)[2] not in logs  # the secret may contain "_"


def test_a_user_sees_only_their_own_jobs_through_the_cli(server: Server) -> None:
    admin = server.env(server.admin)
    tokens = {
        name: clobi(
            "token",
            "create",
            "--role",
            "user",
            "--name",
            name,
            "--session",
            server.url,
            env=admin,
        ).stdout.strip()
        for name in ("alice", "bob")
    }
    clobi("submit", "--session", server.url, "--", "true", env=server.env(tokens["alice"]))
    (bobs,) = clobi(
        "submit", "--session", server.url, "--", "true", env=server.env(tokens["bob"])
    ).stdout.split()
    alice = server.env(tokens["alice"])
    listed = json.loads(clobi("ls", "--session", server.url, "--json", env=alice).stdout)
    assert len(listed) == 1 and listed[0]["id"] != int(bobs)
    clobi("show", bobs, "--session", server.url, env=alice, code=4)
    clobi("kill", bobs, "--session", server.url, env=alice, code=4)


def test_a_wrong_token_is_refused_before_anything_is_done(server: Server) -> None:
    bad = server.env("clobi_0123456789abcdef_" + "x" * 43)
    answer = clobi("ls", "--session", server.url, env=bad, code=SESSION_ERROR)
    assert "refused the token" in answer.stderr
    assert "x" * 43 not in answer.stderr
    login = clobi("login", server.url, env=server.env(), stdin="not-a-token\n", code=SESSION_ERROR)
    assert "not-a-token" not in login.stderr
    assert not (server.home / "config" / "clobi" / "credentials.toml").exists()


def test_token_ls_and_revoke_work_through_the_server(server: Server) -> None:
    admin = server.env(server.admin)
    clobi(
        "token", "create", "--role", "user", "--name", "carol", "--session", server.url, env=admin
    )
    listed = json.loads(clobi("token", "ls", "--json", "--session", server.url, env=admin).stdout)
    carol = next(t for t in listed if t["name"] == "carol")
    assert carol["state"] == "active" and "secret" not in json.dumps(listed)
    clobi("token", "revoke", carol["id"], "--session", server.url, env=admin)
    listed = json.loads(clobi("token", "ls", "--json", "--session", server.url, env=admin).stdout)
    assert next(t for t in listed if t["name"] == "carol")["state"] == "revoked"


def _read_until(stream: IO[bytes], wanted: bytes, timeout_s: float) -> bytes:
    """What `stream` gives until `wanted` appears (fails after `timeout_s`)."""
    seen = b""
    deadline = time.monotonic() + timeout_s
    while wanted not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{wanted!r} did not come within {timeout_s} s; got {seen!r}"
        ready, _, _ = select.select([stream], [], [], left)
        if ready:
            chunk = os.read(stream.fileno(), 65536)
            assert chunk, f"the stream ended before {wanted!r}; got {seen!r}"
            seen += chunk
    return seen


def test_a_remote_user_follows_the_log_of_a_job_running_on_a_remote_agent(
    server: Server, tmp_path: Path
) -> None:
    admin = server.env(server.admin)
    token = clobi(
        "token", "create", "--role", "user", "--name", "dana", "--session", server.url, env=admin
    ).stdout.strip()
    bootstrap = clobi(
        "token", "create", "--role", "bootstrap", "--session", server.url, env=admin
    ).stdout.strip()
    user = server.env(token)
    go = tmp_path / "go"
    script = (
        "echo first line; echo oops >&2;"
        f" while [ ! -e {go} ]; do sleep 0.05; done; echo second line"
    )
    (job_id,) = clobi(
        "submit", "--session", server.url, "--", "sh", "-c", script, env=user
    ).stdout.split()
    with (tmp_path / "agent.log").open("wb") as log:
        agent = subprocess.Popen(
            [sys.executable, "-m", "clobi", "agent", "--join", server.url, "--cpus", "1"],
            env=server.env(bootstrap),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    follower = subprocess.Popen(
        [sys.executable, "-m", "clobi", "logs", "-f", job_id, "--session", server.url],
        env=user,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert follower.stdout is not None
        # the first line arrives while the job still runs (it waits for `go`)
        assert _read_until(follower.stdout, b"first line\n", 30) == b"first line\n"
        shown = json.loads(
            clobi("show", job_id, "--json", "--session", server.url, env=user).stdout
        )
        assert shown["job"]["state"] == "running"
        go.touch()
        rest, err = follower.communicate(timeout=60)
        assert follower.returncode == 0, err
        assert rest == b"second line\n"
        stderr = clobi("logs", "--stderr", job_id, "--session", server.url, env=user).stdout
        assert stderr == "oops\n"
    finally:
        if follower.poll() is None:
            follower.kill()
        assert stop(agent) == 0, (tmp_path / "agent.log").read_text()
