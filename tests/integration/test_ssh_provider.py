"""The ssh provider against a real sshd on 127.0.0.1 (tests/sshd.py) and a real `clobi server`:
agents launched over SSH join, run a job and are terminated, and their bootstrap tokens never
show in a command line or a log. Settings and refusals (host keys, authentication, unreachable
hosts, agents that cannot start) are checked too."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import venv
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clobi.errors import ConfigError, ProviderError
from clobi.manager.plan import ProviderState
from clobi.manager.providers.base import JoinInfo, LaunchRequest
from clobi.manager.providers.ssh import SshHost, SshProvider, parse_settings
from clobi.manager.providers.ssh_remote import source as _remote_source
from clobi.model.pools import PoolSpec
from tests.acceptance.harness import fast_session
from tests.sshd import Sshd, keypair, running_sshd

GIB = 1 << 30
SESSION_ID = "ssh-test"
FAKE_TOKEN = "clobi_b_never-used-secret"
MARKER = "ssh-provider-test-job"
CLOBI = (sys.executable, "-m", "clobi")


# --- settings ---------------------------------------------------------------------------------


def test_every_wrong_setting_is_named_by_its_key() -> None:
    problems = SshProvider.check_settings(
        {
            "hosts": ["ok@node1:22", "bad host", "node2:99999"],
            "key_file": 3,
            "insecure_accept_new_host_keys": "yes",
            "python": "python3; rm -rf /",
            "connect_timeout": -1,
            "colour": "blue",
        }
    )
    keys = sorted(p.split(":", 1)[0] for p in problems)
    assert keys == [
        "colour",
        "connect_timeout",
        "hosts",
        "insecure_accept_new_host_keys",
        "key_file",
        "python",
    ], problems
    assert SshProvider.check_settings({}) == ["hosts: missing (provider ssh needs it)"]
    assert SshProvider.check_settings({"hosts": ["a", "a"]}) == ["hosts: lists a host twice"]


def test_hosts_default_to_our_user_and_port_22() -> None:
    settings, problems = parse_settings(
        {"hosts": ["node1", "clobi@node2:2222", "me@[::1]:22"], "connect_timeout": "3s"}
    )
    assert problems == [] and settings is not None
    first, second, third = settings.hosts
    assert (first.hostname, first.port, first.user) == ("node1", 22, SshHost.parse("x").user)
    assert (second.user, second.hostname, second.port) == ("clobi", "node2", 2222)
    assert (third.hostname, third.port) == ("::1", 22)
    assert second.provider_id(7) == "clobi@node2:2222#7"
    assert settings.connect_timeout_s == 3.0
    assert settings.known_hosts is None and not settings.insecure_accept_new_host_keys


def test_a_pool_with_wrong_settings_or_no_server_cannot_have_a_provider(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hosts: missing"):
        SshProvider(_pool({}), _join(tmp_path, "http://127.0.0.1:1"))
    with pytest.raises(ProviderError, match="clobi server"):
        SshProvider(_pool({"hosts": ["node1"]}), _join(tmp_path, None))


def test_the_remote_helper_runs_with_a_bare_interpreter(tmp_path: Path) -> None:
    """The helper is shipped as source: it must need nothing but what it imports itself."""
    request = {"op": "status", "dir": str(tmp_path / "w"), "ids": [1, 2]}
    done = subprocess.run(
        [sys.executable, "-I", "-c", _remote_source(), json.dumps(request)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"running": []}
    assert (tmp_path / "w").stat().st_mode & 0o777 == 0o700


# --- refusals ---------------------------------------------------------------------------------


def test_an_unreachable_host_is_pending_then_gone(tmp_path: Path) -> None:
    port = _closed_port()
    host = f"root@127.0.0.1:{port}"
    provider = SshProvider(
        _pool({"hosts": [host], "connect_timeout": 2, "unreachable_timeout": 0.5}),
        _join(tmp_path, "http://127.0.0.1:1"),
    )
    with contextlib.closing(provider):
        pid = f"{host}#1"
        assert provider.describe([pid, "garbage", "x#y"]) == {
            pid: ProviderState.PENDING,
            "garbage": ProviderState.GONE,
            "x#y": ProviderState.GONE,
        }
        with pytest.raises(ProviderError, match=f"{host}: cannot connect to port {port}"):
            provider.terminate([pid])
        [launched] = provider.launch([LaunchRequest(1, FAKE_TOKEN)])
        assert launched.provider_id == ""
        assert (
            launched.error.startswith("no free host: ") and "connection refused" in launched.error
        )
        time.sleep(0.6)
        assert provider.describe([pid]) == {pid: ProviderState.GONE}
        provider.terminate([pid])  # unreachable for long enough: it counts as gone


@pytest.mark.slow
def test_unknown_or_changed_host_keys_and_unknown_client_keys_are_refused(
    sshd: Sshd, tmp_path: Path
) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    wrong = tmp_path / "wrong_known_hosts"
    other_key = tmp_path / "other"
    other = keypair(other_key)[1]
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {other}\n")
    cases = [
        ({"known_hosts": str(empty)}, "host key is not in known_hosts"),
        ({"known_hosts": str(wrong)}, "host key differs from known_hosts"),
        ({"key_file": str(other_key)}, "authentication as root failed"),
        ({"known_hosts": str(tmp_path / "missing")}, None),
    ]
    for overrides, message in cases:
        settings = {**_settings(sshd, tmp_path, [sshd.host()]), **overrides}
        provider = SshProvider(_pool(settings), _join(tmp_path, "http://127.0.0.1:1"))
        with contextlib.closing(provider):
            if message is None:
                with pytest.raises(ProviderError, match=r"known_hosts: .*missing"):
                    provider.describe([f"{sshd.host()}#1"])
                continue
            [launched] = provider.launch([LaunchRequest(1, FAKE_TOKEN)])
            assert message in launched.error, launched.error
            assert "never-used-secret" not in launched.error

    # a new host key is let in only when asked to, for tests
    settings = _settings(sshd, tmp_path, [sshd.host()])
    settings.update(known_hosts=str(empty), insecure_accept_new_host_keys=True)
    provider = SshProvider(_pool(settings), _join(tmp_path, "http://127.0.0.1:1"))
    with contextlib.closing(provider):
        assert provider.describe([f"{sshd.host()}#1"]) == {f"{sshd.host()}#1": ProviderState.GONE}
    assert empty.read_text() == ""  # known_hosts is read, never written


@pytest.mark.slow
def test_an_agent_that_cannot_start_is_a_refused_launch(sshd: Sshd, tmp_path: Path) -> None:
    bare = tmp_path / "bare-venv"  # an interpreter without clobi
    venv.create(bare, with_pip=False)
    settings = {**_settings(sshd, tmp_path, [sshd.host()]), "python": str(bare / "bin/python")}
    provider = SshProvider(_pool(settings), _join(tmp_path, "http://127.0.0.1:1"))
    with contextlib.closing(provider):
        [launched] = provider.launch([LaunchRequest(5, FAKE_TOKEN)])
    assert "the agent exited at once (1)" in launched.error, launched.error
    assert "No module named clobi" in launched.error
    assert "never-used-secret" not in launched.error

    settings["python"] = "/nonexistent/python3"
    provider = SshProvider(_pool(settings), _join(tmp_path, "http://127.0.0.1:1"))
    with contextlib.closing(provider):
        [launched] = provider.launch([LaunchRequest(6, FAKE_TOKEN)])
    assert launched.error.endswith("no /nonexistent/python3 there (see `python`)"), launched.error


@pytest.mark.slow
def test_an_agent_that_exits_is_gone_and_its_host_is_free_again(sshd: Sshd, tmp_path: Path) -> None:
    # nothing listens at the join URL: the agent gives up after a few seconds
    settings = _settings(sshd, tmp_path, [sshd.host()])
    provider = SshProvider(_pool(settings), _join(tmp_path, f"http://127.0.0.1:{_closed_port()}"))
    with contextlib.closing(provider):
        [first] = provider.launch([LaunchRequest(1, FAKE_TOKEN)])
        assert first.provider_id == f"{sshd.host()}#1", first.error
        assert provider.describe([first.provider_id]) == {first.provider_id: ProviderState.RUNNING}
        _wait_for(
            lambda: provider.describe([first.provider_id])[first.provider_id] is ProviderState.GONE,
            "the agent to give up",
        )
        [second] = provider.launch([LaunchRequest(2, FAKE_TOKEN)])
        assert second.provider_id == f"{sshd.host()}#2", second.error
        provider.terminate([first.provider_id, second.provider_id])
    remote = tmp_path / "remote" / SESSION_ID / "lab"
    assert "cannot connect" in (remote / "1.log").read_text()
    assert sorted(p.name for p in remote.iterdir()) == [".lock", "1.log", "2.log"]
    assert "never-used-secret" not in (remote / "1.log").read_text()


# --- end to end -------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    log: Path
    env: dict[str, str]  # an admin's environment


@pytest.mark.slow
def test_agents_launched_over_ssh_join_run_a_job_and_are_terminated(
    sshd: Sshd, server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hosts = [sshd.host("127.0.0.1"), sshd.host("localhost")]
    pool = _pool(_settings(sshd, tmp_path, hosts), cpus=1)
    join = _join(tmp_path, server.url)
    tokens = {n: _bootstrap(server, n) for n in (101, 102)}
    provider = SshProvider(pool, join)
    try:
        launched = provider.launch(
            [LaunchRequest(n, token) for n, token in tokens.items()]
            + [LaunchRequest(103, FAKE_TOKEN)]
        )
        assert [(x.instance_id, x.provider_id, x.error) for x in launched] == [
            (101, f"{hosts[0]}#101", ""),
            (102, f"{hosts[1]}#102", ""),
            (103, "", "no free host"),
        ]
        ids = [x.provider_id for x in launched[:2]]
        agents = _wait_for_agents(server, 2)
        assert sorted((a["pool"], a["instance_id"]) for a in agents) == [
            ("lab", 101),
            ("lab", 102),
        ]
        # a restarted manager knows them from their provider ids alone
        with contextlib.closing(SshProvider(pool, join)) as fresh:
            assert fresh.describe(ids) == dict.fromkeys(ids, ProviderState.RUNNING)
            # asked again for a running instance (a manager that crashed while launching)
            again = fresh.launch([LaunchRequest(101, FAKE_TOKEN), LaunchRequest(104, FAKE_TOKEN)])
            assert [(x.provider_id, x.error) for x in again] == [
                (ids[0], ""),
                ("", "no free host"),
            ]

        _clobi(server, "submit", "--", "sh", "-c", "echo ran-over-ssh")
        assert "1 succeeded" in _clobi(server, "wait", "--timeout", "20")

        # one agent runs a long job: terminate kills it and its job after the grace, while
        # the idle one drains and exits at the SIGTERM
        _clobi(server, "submit", "--", "sh", "-c", f"sleep 97.3; : {MARKER}")
        _wait_for(lambda: MARKER in _command_lines(), "the long job to start")
        secrets = [t.split("_", 2)[2] for t in tokens.values()]
        _assert_absent(secrets, _command_lines(), "a command line")

        provider.term_grace_s = 1.0
        started = time.monotonic()
        with caplog.at_level(logging.INFO, "clobi.manager.ssh"):
            provider.terminate(ids)
        assert time.monotonic() - started < 8
        killed = [r.getMessage() for r in caplog.records if "killed" in r.getMessage()]
        assert len(killed) == 1 and re.search(r"instances \[10[12]\] killed 1s after", killed[0])
        assert provider.describe(ids) == dict.fromkeys(ids, ProviderState.GONE)
        assert _agent_processes(server.url) == []
        assert MARKER not in _command_lines() and "sleep 97.3" not in _command_lines()
        provider.terminate(ids)  # already gone: fine
    finally:
        provider.close()
        _kill(_agent_processes(server.url))

    remote = tmp_path / "remote" / SESSION_ID / "lab"
    agent_logs = [(remote / f"{n}.log").read_text() for n in (101, 102)]
    assert all("Traceback" not in text for text in agent_logs), agent_logs
    assert not list(remote.glob("*.pid"))
    logs = "\n".join([*agent_logs, sshd.log.read_text(errors="replace"), server.log.read_text()])
    assert "Accepted publickey for root" in logs  # the sshd log is not empty
    _assert_absent(secrets, logs, "a log")


# --- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    # agents started through it keep their work directories in the test's folder
    with running_sshd(tmp_path / "sshd", {"XDG_CACHE_HOME": str(tmp_path / "cache")}) as server:
        yield server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    session = fast_session(tmp_path / "session")
    env = _user_env(tmp_path / "home")
    admin = subprocess.run(
        [*CLOBI, "token", "create", "--role", "admin", "--session", str(session.root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*CLOBI, "server", "--session", str(session.root)],
            env={**env, "CLOBI_BIND": "127.0.0.1:0"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = _wait_for_url(log, proc)
        yield Server(url, log, {**env, "CLOBI_TOKEN": admin, "CLOBI_SESSION": url})
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _user_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOBI_")}
    return {**env, "XDG_CONFIG_HOME": str(home / "config"), "XDG_CACHE_HOME": str(home / "cache")}


def _wait_for_url(log: Path, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.search(r"listening on (http://\S+)", log.read_text())
        if found:
            return found.group(1)
        assert proc.poll() is None, log.read_text()
        time.sleep(0.05)
    raise AssertionError(f"the server did not start:\n{log.read_text()}")


def _clobi(server: Server, *args: str) -> str:
    done = subprocess.run(
        [*CLOBI, *args],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _bootstrap(server: Server, instance_id: int) -> str:
    """The single-use token the manager would make for the instance's agent."""
    create = ("token", "create", "--role", "bootstrap", "--pool", "lab")
    return _clobi(server, *create, "--name", f"instance-{instance_id}").strip()


def _wait_for_agents(server: Server, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        agents: list[dict[str, Any]] = json.loads(_clobi(server, "agents", "--json"))
        if len(agents) >= count:
            return agents
        time.sleep(0.2)
    raise AssertionError(f"{count} agents did not join: {agents}")


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _pool(settings: dict[str, Any], cpus: float = 1) -> PoolSpec:
    return PoolSpec(
        name="lab", provider="ssh", cpus=cpus, memory_bytes=GIB, max=3, settings=settings
    )


def _join(tmp_path: Path, url: str | None) -> JoinInfo:
    return JoinInfo(url, tmp_path / "session", sys.executable, SESSION_ID)


def _settings(sshd: Sshd, tmp_path: Path, hosts: list[str]) -> dict[str, Any]:
    return {
        "hosts": hosts,
        "key_file": str(sshd.client_key),
        "known_hosts": str(sshd.known_hosts),
        "python": sys.executable,
        "work_dir": str(tmp_path / "remote"),
        "connect_timeout": "5s",
    }


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _command_lines() -> str:
    lines = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                lines.append(Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" "))
    return b"\n".join(lines).decode(errors="replace")


def _agent_processes(url: str) -> list[int]:
    """Live processes whose command line joins `url` (zombies have none)."""
    needle = f"--join\0{url}\0".encode()
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in Path(f"/proc/{name}/cmdline").read_bytes():
                    found.append(int(name))
    return found


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def _assert_absent(secrets: list[str], text: str, where: str) -> None:
    for secret in secrets:
        assert secret not in text, f"a bootstrap token shows in {where}"
