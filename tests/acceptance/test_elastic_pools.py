"""Elastic pools as a user runs them: pools declared in clobi.toml, `clobi manager` growing
them from the queue and shrinking them when idle, a simulated cloud whose "instances" are real
agent processes, preemption, hard kill and drain, and `clobi why`."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clobi.manager.providers.simulated import request_preemption
from clobi.model.instances import InstanceState
from clobi.model.records import JobFilter
from clobi.model.states import JobState
from clobi.session import Session
from tests.acceptance.harness import clobi, fast_session, terminate_pool_machines

pytestmark = pytest.mark.slow

BURST = """
[manager]
tick = "1s"
idle_votes = 2

[pools.owned]
provider = "local"
cpus = 4
min = 1
max = 2
cost_per_hour = 0
idle_timeout = "3s"

[pools.cloud]
provider = "simulated"
cpus = 4
max = 6
cost_per_hour = 0.10
idle_timeout = "3s"
boot_timeout = "60s"
boot_delay = "5s"
"""


def declare(session: Session, pools: str) -> None:
    config = session.root / "clobi.toml"
    config.write_text(config.read_text() + pools)


def wait_for(what: str, check: Callable[[], bool], timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


class Manager:
    """`clobi manager` as a subprocess; stopped (SIGTERM) at the end."""

    def __init__(self, session: Session, log: Path) -> None:
        self.session, self.log = session, log
        self.started = time.time()
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "clobi", "manager", "--session", str(session.root)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@pytest.fixture
def pools_session(tmp_path: Path) -> Iterator[Session]:
    session = fast_session(tmp_path / "session")
    yield session
    _terminate_everything(session)


def _terminate_everything(session: Session) -> None:
    """Whatever a test left: every machine its pools' providers started, and every process
    naming the session on its command line."""
    terminate_pool_machines(session)
    mine = str(session.root)
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if mine in cmdline and "clobi" in cmdline:
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)


def agent_processes(session: Session) -> list[int]:
    mine = str(session.root)
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        text = b" ".join(cmdline).decode(errors="replace")
        if state != "Z" and mine in text and " agent " in f" {text} ":
            found.append(int(pid))
    return found


def test_a_burst_grows_the_cloud_pool_at_once_and_shrinks_it_back_when_idle(
    pools_session: Session, tmp_path: Path
) -> None:
    session = pools_session
    declare(session, BURST)
    root = str(session.root)
    submitted = clobi("submit", "--session", root, "-n", "300", "--", "sleep", "2")
    assert submitted.returncode == 0, submitted.stderr
    store = session.open_store()
    manager = Manager(session, tmp_path / "manager.log")
    try:
        # the cloud pool grows in the manager's first tick, to its max
        wait_for("cloud launch", lambda: _launched(store, "cloud") >= 6, 15, manager.log)
        events = store.events(limit=100_000)
        first = min(e.ts for e in events if e.kind.startswith("manager_"))
        cloud = [e for e in events if e.kind == "manager_launch" and "pool cloud:" in e.detail]
        assert cloud[0].ts - first < 1.0, "the cloud pool did not grow in the first tick"
        assert cloud[0].ts - manager.started < 30.0  # (a loaded machine starts Python slowly)

        wait_for(
            "all 300 jobs done",
            lambda: store.count_states().get(JobState.SUCCEEDED, 0) == 300,
            150,
            manager.log,
        )
        # then back to min: owned keeps 1, cloud none; no cloud machine is left running
        wait_for(
            "the pools drain back to min",
            lambda: _live(store, "cloud") == 0 and _live(store, "owned") == 1,
            60,
            manager.log,
        )
    finally:
        assert manager.stop() == 0, manager.log.read_text()[-4000:]
        store.close()
    assert len(agent_processes(session)) == 1  # the owned pool's min, nothing else

    listed = json.loads(clobi("pool", "ls", "--json", "--session", root).stdout)
    costs = {p["name"]: p["cost"] for p in listed}
    assert costs["owned"] == 0 and costs["cloud"] > 0
    text = clobi("pool", "ls", "--session", root).stdout
    assert "cloud" in text and "simulated" in text

    store = session.open_store()
    try:
        decisions = [e for e in store.events(limit=100_000) if e.kind.startswith("manager_")]
    finally:
        store.close()
    assert {"manager_launch", "manager_terminate"} <= {e.kind for e in decisions}
    for e in decisions:  # every scale decision says why
        assert re.fullmatch(r"pool (owned|cloud): [^:]+: .{8,}", e.detail), e.detail


def _launched(store: object, pool: str) -> int:
    from clobi.store.base import Store

    assert isinstance(store, Store)
    return len(store.list_instances(pool, include_ended=True))


def _live(store: object, pool: str) -> int:
    from clobi.store.base import Store

    assert isinstance(store, Store)
    return sum(1 for i in store.list_instances(pool) if i.state is not InstanceState.TERMINATING)


ONE_CLOUD = """
[manager]
tick = "500ms"

[pools.cloud]
provider = "simulated"
cpus = 2
max = 2
idle_timeout = "60s"
boot_delay = "500ms"
preempt_notice = "1s"
"""


def test_a_preempted_busy_instance_s_jobs_are_requeued_and_succeed_elsewhere(
    pools_session: Session, tmp_path: Path
) -> None:
    session = pools_session
    declare(session, ONE_CLOUD)
    root = str(session.root)
    ids = clobi("submit", "--session", root, "-n", "4", "--", "sleep", "3").stdout.split()
    store = session.open_store()
    manager = Manager(session, tmp_path / "manager.log")
    try:
        wait_for("4 jobs running", lambda: _running(store) == 4, 30, manager.log)
        victim = next(i for i in store.list_instances("cloud") if i.agent_id is not None)
        request_preemption(session.root, "cloud", victim.provider_id)
        wait_for(
            "the preempted instance ends",
            lambda: all(i.id != victim.id for i in store.list_instances("cloud")),
            30,
            manager.log,
        )
        wait_for(
            "all jobs succeed",
            lambda: store.count_states().get(JobState.SUCCEEDED, 0) == 4,
            60,
            manager.log,
        )
        for job_id in map(int, ids):
            attempts = store.attempts(job_id)
            assert [a.state.value for a in attempts].count("succeeded") == 1
        moved = [int(j) for j in ids if len(store.attempts(int(j))) > 1]
        assert moved, "no job was running on the preempted instance"
        for job_id in moved:
            assert store.attempts(job_id)[0].agent_id == victim.agent_id
            assert store.attempts(job_id)[-1].agent_id != victim.agent_id
    finally:
        assert manager.stop() == 0
        store.close()


def _running(store: object) -> int:
    from clobi.store.base import Store

    assert isinstance(store, Store)
    return store.count_states().get(JobState.RUNNING, 0)


def test_a_job_needing_a_gpu_no_pool_offers_stays_queued_and_why_says_so(
    pools_session: Session, tmp_path: Path
) -> None:
    session = pools_session
    declare(session, ONE_CLOUD)
    root = str(session.root)
    spec = tmp_path / "gpu.toml"
    spec.write_text('command = ["true"]\n[resources]\ngpus = 1\n')
    (job,) = clobi("submit", str(spec), "--session", root).stdout.split()
    store = session.open_store()
    manager = Manager(session, tmp_path / "manager.log")
    try:
        wait_for(
            "a manager verdict",
            lambda: store.get_meta("manager.verdicts") not in (None, "[]"),
            15,
            manager.log,
        )
        time.sleep(1.5)  # a few ticks: nothing may be launched for it
        assert store.list_instances(include_ended=True) == []
        assert store.get_job(int(job)).state is JobState.QUEUED
    finally:
        assert manager.stop() == 0
        store.close()
    why = clobi("why", job, "--session", root)
    assert why.returncode == 0, why.stderr
    assert "no pool offers" in why.stdout and "1 gpu" in why.stdout
    assert "the manager" in why.stdout


HAND = """
[manager]
tick = "500ms"

[pools.cloud]
provider = "simulated"
cpus = 1
min = 2
max = 2
idle_timeout = "60s"
boot_delay = "200ms"
"""


def test_hard_kill_requeues_at_once_and_drain_waits_for_the_jobs(
    pools_session: Session, tmp_path: Path
) -> None:
    session = pools_session
    declare(session, HAND)
    root = str(session.root)
    store = session.open_store()
    manager = Manager(session, tmp_path / "manager.log")
    try:
        wait_for("two agents", lambda: len(store.list_agents()) == 2, 30, manager.log)
        a, b = store.list_instances("cloud")
        ids = clobi("submit", "--session", root, "-n", "2", "--", "sleep", "4").stdout.split()
        wait_for("2 running", lambda: _running(store) == 2, 20, manager.log)
        job_on = {att.agent_id: int(j) for j in ids for att in store.attempts(int(j))}

        killed = clobi("pool", "kill", "cloud", "--instance", str(a.id), "--session", root)
        assert killed.returncode == 0, killed.stderr
        assert "1 job requeued" in killed.stdout
        assert store.get_job(job_on[a.agent_id]).state is JobState.QUEUED  # at once

        drained = clobi("pool", "drain", "cloud", "--instance", str(b.id), "--session", root)
        assert drained.returncode == 0, drained.stderr
        time.sleep(1.5)
        assert store.get_job(job_on[b.agent_id]).state is JobState.RUNNING  # drain waits
        wait_for(
            "the drained instance's job succeeds",
            lambda: store.get_job(job_on[b.agent_id]).state is JobState.SUCCEEDED,
            20,
            manager.log,
        )
        wait_for(
            "the drained instance ends",
            lambda: all(i.id != b.id for i in store.list_instances("cloud")),
            20,
            manager.log,
        )
        (ended_b,) = [i for i in store.list_instances(include_ended=True) if i.id == b.id]
        assert ended_b.state is InstanceState.TERMINATED
    finally:
        assert manager.stop() == 0
        store.close()


def test_a_server_runs_the_manager_and_its_machines_join_with_single_use_tokens(
    pools_session: Session, tmp_path: Path
) -> None:
    session = pools_session
    declare(session, ONE_CLOUD.replace("max = 2", "min = 1\nmax = 1"))
    root = str(session.root)
    admin = clobi("token", "create", "--role", "admin", "--session", root).stdout.strip()
    log = tmp_path / "server.log"
    env = {**os.environ, "CLOBI_BIND": "127.0.0.1:0", "CLOBI_TOKEN": admin}
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "clobi", "server", "--session", root],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    store = session.open_store()
    try:
        wait_for("the server", lambda: "listening on" in log.read_text(), 30, log)
        url = re.search(r"listening on (\S+)", log.read_text()).group(1)  # type: ignore[union-attr]
        wait_for("the cloud machine's agent", lambda: len(store.list_agents()) == 1, 30, log)
        (agent,) = store.list_agents()
        (instance,) = store.list_instances("cloud")
        assert (agent.pool, agent.instance_id) == ("cloud", instance.id)
        assert instance.state is InstanceState.RUNNING and instance.agent_id == agent.id
        (bootstrap,) = [t for t in store.list_tokens() if t.name == f"instance-{instance.id}"]
        assert bootstrap.used_at is not None and bootstrap.pool == "cloud"  # spent on join

        # a remote user sees the pools and asks why through the server
        (job,) = clobi("submit", "--session", url, "--", "true", env=env).stdout.split()
        pools = json.loads(clobi("pool", "ls", "--json", "--session", root).stdout)
        assert pools[0]["name"] == "cloud"
        why = clobi("why", job, "--session", url, env=env)
        assert why.returncode == 0 and f"job {job}" in why.stdout, why.stderr
        wait_for(
            "the job",
            lambda: store.get_job(int(job)).state is JobState.SUCCEEDED,
            30,
            log,
        )
        assert admin.split("_", 2)[2] not in log.read_text()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        store.close()


def test_a_launch_a_crashed_manager_recorded_but_never_made_is_made_by_the_next(
    pools_session: Session, tmp_path: Path
) -> None:
    session = pools_session
    declare(session, HAND.replace("min = 2", "min = 1"))
    store = session.open_store()
    try:
        # what a manager leaves when it dies between recording a launch and asking for it
        orphan = store.create_instance("cloud", "simulated", 0.0, "min 1")
        time.sleep(1.2)  # older than two ticks
        once = clobi("manager", "--once", "--session", str(session.root))
        assert once.returncode == 0, once.stderr
        (record,) = store.list_instances("cloud")
        assert record.id == orphan.id and record.provider_id  # the same instance, made now
        wait_for("its agent", lambda: len(store.list_agents()) == 1, 20, tmp_path / "none")
        assert store.list_agents()[0].instance_id == orphan.id
    finally:
        store.close()


def test_a_manager_killed_mid_burst_is_replaced_and_nothing_is_lost_or_doubled(
    pools_session: Session, tmp_path: Path
) -> None:
    session = pools_session
    declare(session, ONE_CLOUD.replace("max = 2", "max = 3"))
    root = str(session.root)
    clobi("submit", "--session", root, "-n", "60", "--", "sleep", "0.5")
    store = session.open_store()
    first = Manager(session, tmp_path / "first.log")
    try:
        wait_for("a launch", lambda: _launched(store, "cloud") >= 1, 15, first.log)
        first.proc.kill()  # kill -9: no chance to clean up
        first.proc.wait()
        second = Manager(session, tmp_path / "second.log")
        try:
            wait_for(
                "all 60 jobs",
                lambda: store.count_states().get(JobState.SUCCEEDED, 0) == 60,
                90,
                second.log,
            )
        finally:
            assert second.stop() == 0
        launched = store.list_instances("cloud", include_ended=True)
        assert len(launched) <= 3 + 1, launched  # the max, plus at most one replaced
        for job in store.list_jobs(JobFilter(limit=None)):
            states = [a.state.value for a in store.attempts(job.id)]
            assert states.count("succeeded") == 1, (job.id, states)
    finally:
        store.close()


def test_scaling_a_pool_at_runtime_is_written_to_the_file_and_followed_without_restart(
    pools_session: Session, tmp_path: Path
) -> None:
    session = pools_session
    declare(session, HAND.replace("min = 2\nmax = 2", "min = 1\nmax = 1"))
    root = str(session.root)
    store = session.open_store()
    manager = Manager(session, tmp_path / "manager.log")
    try:
        wait_for("one instance", lambda: _live(store, "cloud") == 1, 20, manager.log)
        scaled = clobi("pool", "scale", "cloud", "--min", "3", "--max", "3", "--session", root)
        assert scaled.returncode == 0, scaled.stderr
        config = (session.root / "clobi.toml").read_text()
        assert "min = 3" in config and "max = 3" in config
        assert "min = 1" in (session.root / "clobi.toml.bak").read_text()
        wait_for("three instances", lambda: _live(store, "cloud") == 3, 20, manager.log)
        assert manager.proc.poll() is None  # the same manager process
        events = [e.detail for e in store.events(limit=100_000) if e.kind == "manager_launch"]
        assert any("min 3" in d for d in events), events
    finally:
        assert manager.stop() == 0
        store.close()
