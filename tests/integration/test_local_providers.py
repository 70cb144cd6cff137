"""The `local` and `simulated` providers with real agent processes on an embedded session."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clobi.errors import ConfigError, ProviderError
from clobi.manager.plan import ProviderState
from clobi.manager.providers import localproc
from clobi.manager.providers.base import JoinInfo, LaunchRequest, Provider
from clobi.manager.providers.local import LocalProvider
from clobi.manager.providers.simulated import SimulatedProvider, request_preemption
from clobi.model.pools import PoolSpec
from clobi.model.records import AgentRecord
from clobi.session import Session
from tests.acceptance.harness import client_of, fast_session, wait_for

RUNNING, PENDING, PREEMPTING, GONE = (
    ProviderState.RUNNING,
    ProviderState.PENDING,
    ProviderState.PREEMPTING,
    ProviderState.GONE,
)
NEVER_BOOTS = "1h"  # a simulated machine that stays a sleeping boot process: no agent, fast


@pytest.fixture
def session(tmp_path: Path) -> Session:
    return fast_session(tmp_path / "s")


@pytest.fixture
def join(session: Session) -> JoinInfo:
    return JoinInfo(url=None, session_root=session.root, python=sys.executable, session_id="t")


Make = Callable[..., Any]


@pytest.fixture
def make(join: JoinInfo) -> Iterator[Make]:
    """Build providers (`make("local", name=..., **settings)`); at the end every machine of
    theirs is terminated, and any process that survived that is killed."""
    made: list[Provider] = []

    def build(kind: str, name: str = "pool", cost_per_hour: float = 0.0, **settings: Any) -> Any:
        clock = settings.pop("clock", None)
        pool = PoolSpec(name, kind, cpus=1, cost_per_hour=cost_per_hour, settings=settings)
        cls = LocalProvider if kind == "local" else SimulatedProvider
        provider = cls(pool, join) if clock is None else cls(pool, join, clock=clock)
        made.append(provider)
        return provider

    try:
        yield build
    finally:
        for provider in made:
            try:
                machines = _machines(provider)
            except ProviderError:  # a test broke the state file on purpose
                continue
            with contextlib.suppress(Exception):
                provider.terminate(list(machines))
            for machine in machines.values():
                _kill_if_same(machine)


def _machines(provider: Any) -> dict[str, localproc.Machine]:
    with provider.state.edit() as book:
        return dict(book.machines)


def _kill_if_same(machine: localproc.Machine) -> None:
    stat = localproc.read_stat(machine.pid)
    if stat is not None and stat.start_ticks == machine.start_ticks:
        with contextlib.suppress(OSError):
            os.killpg(machine.pid, signal.SIGKILL)


def _alive(pid: int, start_ticks: int) -> bool:
    """Read /proc directly: a live, non-zombie process with this pid and start time."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = text.rpartition(")")[2].split()
    return fields[0] not in ("Z", "X") and int(fields[19]) == start_ticks


def _tree(machine: localproc.Machine) -> list[tuple[int, int]]:
    """The machine's process and its descendants, as (pid, start ticks)."""
    pids = {machine.pid} | localproc.descendants(machine.pid)
    found = []
    for pid in pids:
        stat = localproc.read_stat(pid)
        if stat is not None:
            found.append((pid, stat.start_ticks))
    return found


def _agents_of(session: Session, pool: str) -> list[AgentRecord]:
    store = session.open_store()
    try:
        return [a for a in store.list_agents() if a.pool == pool]
    finally:
        store.close()


def _requests(*instance_ids: int) -> list[LaunchRequest]:
    return [LaunchRequest(i, bootstrap=f"boot-secret-{i}") for i in instance_ids]


def _kinds() -> list[Any]:
    return [
        pytest.param(("local", {}), id="local"),
        pytest.param(("simulated", {"boot_delay": "0s"}), id="simulated"),
    ]


# --- both providers ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", _kinds())
def test_launched_agents_join_run_and_leave_no_process_after_terminate(
    kind: tuple[str, dict[str, Any]], make: Make, session: Session
) -> None:
    provider = make(kind[0], name="p1", **kind[1])
    launched = provider.launch(_requests(1, 2))
    ids = [x.provider_id for x in launched]
    assert [x.error for x in launched] == ["", ""]
    assert len(set(ids)) == 2
    wait_for(lambda: len(_agents_of(session, "p1")) == 2, 20, "both agents registered")
    agents = _agents_of(session, "p1")
    assert sorted(a.name for a in agents) == ["p1-1", "p1-2"]
    assert sorted(a.instance_id for a in agents) == [1, 2]
    assert provider.describe([*ids, "unknown-7"]) == {ids[0]: RUNNING, ids[1]: RUNNING,
                                                      "unknown-7": GONE}  # fmt: skip
    trees = [p for m in _machines(provider).values() for p in _tree(m)]
    assert len(trees) >= 2

    provider.terminate(ids)

    assert provider.describe(ids) == {ids[0]: GONE, ids[1]: GONE}
    wait_for(lambda: not any(_alive(*p) for p in trees), 5, "every process of both machines gone")
    provider.terminate(ids)  # already gone: fine


@pytest.mark.parametrize("kind", _kinds())
def test_a_restarted_manager_describes_and_terminates_the_machines_of_the_last_one(
    kind: tuple[str, dict[str, Any]], make: Make, session: Session
) -> None:
    first = make(kind[0], name="p2", **kind[1])
    ids = [x.provider_id for x in first.launch(_requests(3, 4))]
    wait_for(lambda: len(_agents_of(session, "p2")) == 2, 20, "both agents registered")
    trees = [p for m in _machines(first).values() for p in _tree(m)]
    del first

    second = make(kind[0], name="p2", **kind[1])
    assert second.describe(ids) == {ids[0]: RUNNING, ids[1]: RUNNING}
    second.terminate([ids[0]])
    assert second.describe(ids) == {ids[0]: GONE, ids[1]: RUNNING}
    second.terminate([ids[1]])
    wait_for(lambda: not any(_alive(*p) for p in trees), 5, "every process gone")


@pytest.mark.parametrize("kind", _kinds())
def test_terminating_a_machine_kills_the_jobs_its_agent_runs(
    kind: tuple[str, dict[str, Any]], make: Make, session: Session
) -> None:
    provider = make(kind[0], name="p3", **kind[1])
    marker = f"TEST_PROVIDER_JOB={uuid.uuid4().hex}"
    name, value = marker.split("=")
    with client_of(session) as client:
        client.submit({"command": ["sleep", "1000"], "env": {name: value}})
    (launched,) = provider.launch(_requests(5))
    try:
        wait_for(lambda: _marked(marker) != [], 20, "the job's process running")
        provider.terminate([launched.provider_id])
        wait_for(lambda: _marked(marker) == [], 5, "the job's processes gone")
    finally:
        for pid in _marked(marker):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _marked(marker: str) -> list[int]:
    """Live processes with the marker in their environment."""
    entry = marker.encode()
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                if entry in Path(f"/proc/{name}/environ").read_bytes().split(b"\0"):
                    stat = localproc.read_stat(int(name))
                    if stat is not None and not stat.dead:
                        found.append(int(name))
    return found


# --- local ---------------------------------------------------------------------------------


def test_a_local_agent_that_exits_is_gone(make: Make, session: Session) -> None:
    provider = make("local", name="p4")
    (launched,) = provider.launch(_requests(6))
    wait_for(lambda: len(_agents_of(session, "p4")) == 1, 20, "the agent registered")
    (machine,) = _machines(provider).values()
    os.kill(machine.pid, signal.SIGTERM)  # drains: no job, so it exits at once
    wait_for(lambda: provider.describe([launched.provider_id])[launched.provider_id] is GONE, 10)
    assert _machines(provider) == {}


def test_launching_a_live_instance_again_starts_nothing(make: Make) -> None:
    provider = make("local", name="p5")
    (first,) = provider.launch(_requests(7))
    (machine,) = _machines(provider).values()
    (again,) = provider.launch(_requests(7))
    assert again == first
    assert list(_machines(provider).values()) == [machine]


def test_an_agent_that_cannot_be_started_is_a_refused_launch(make: Make, tmp_path: Path) -> None:
    provider = make("local", name="p6", python=str(tmp_path / "no-python"))
    (launched,) = provider.launch(_requests(8))
    assert launched.provider_id == ""
    assert "cannot start an agent" in launched.error
    assert "boot-secret" not in launched.error


def test_the_local_state_file_holds_pid_and_start_time(make: Make, join: JoinInfo) -> None:
    provider = make("local", name="p7")
    provider.launch(_requests(9))
    state = json.loads((join.session_root / "manager" / "local" / "p7.json").read_text())
    entry = state["machines"]["local-9"]
    assert entry["instance_id"] == 9
    assert localproc.read_stat(entry["pid"]).start_ticks == entry["start_ticks"]  # type: ignore[union-attr]
    assert (join.session_root / "manager" / "local" / "9.log").exists()


def test_embedded_agents_get_no_token_and_server_agents_get_it_only_in_their_environment(
    join: JoinInfo,
) -> None:
    pool = PoolSpec(name="p", provider="local", cpus=2, labels=frozenset({"b", "a"}))
    argv, env = localproc.agent_command(pool, join, 11, "boot-secret", "/py")
    assert argv[:4] == ["/py", "-m", "clobi", "agent"]
    assert argv[-4:] == ["--pool", "p", "--instance", "11"]
    assert "--labels" in argv and "a,b" in argv
    assert "boot-secret" not in " ".join(argv) and "CLOBI_TOKEN" not in env

    remote = JoinInfo(url="https://clobi.example", session_root=join.session_root, python="/py")
    argv, env = localproc.agent_command(pool, remote, 11, "boot-secret", "/py")
    assert argv[-2:] == ["--join", "https://clobi.example"]
    assert "boot-secret" not in " ".join(argv)
    assert env["CLOBI_TOKEN"] == "boot-secret"


# --- simulated -----------------------------------------------------------------------------


def test_a_booting_machine_is_pending_then_joins_on_its_own(make: Make, session: Session) -> None:
    provider = make("simulated", name="p8", boot_delay="0.5s")
    (launched,) = provider.launch(_requests(12))
    pid = launched.provider_id
    assert provider.describe([pid]) == {pid: PENDING}
    # Nobody calls describe while it boots: the agent still starts and registers.
    wait_for(lambda: len(_agents_of(session, "p8")) == 1, 20, "the agent registered")
    assert provider.describe([pid]) == {pid: RUNNING}


def test_launches_over_the_quota_are_refused_until_a_machine_ends(make: Make) -> None:
    provider = make("simulated", name="p9", quota=2, boot_delay=NEVER_BOOTS)
    launched = provider.launch(_requests(13, 14, 15))
    assert [x.error for x in launched] == ["", "", "quota exceeded (2)"]
    assert launched[2].provider_id == ""
    provider.terminate([launched[0].provider_id])
    (again,) = provider.launch(_requests(15))
    assert again.error == "" and again.provider_id == "sim-15"
    assert make("simulated", name="p9b", quota=0).launch(_requests(16))[0].error == (
        "quota exceeded (0)"
    )


def test_launches_fail_at_the_failure_rate_repeatably_with_a_seed(make: Make) -> None:
    always = make("simulated", name="p10", failure_rate=1.0, boot_delay=NEVER_BOOTS)
    assert {x.error for x in always.launch(_requests(17, 18))} == {
        "launch failed (simulated failure)"
    }
    assert _machines(always) == {}

    def pattern(name: str) -> list[bool]:
        sim = make("simulated", name=name, failure_rate=0.5, seed=7, boot_delay=NEVER_BOOTS)
        return [x.error == "" for x in sim.launch(_requests(*range(20, 30)))]

    first, second = pattern("p11"), pattern("p12")
    assert first == second
    assert True in first and False in first


def test_a_preempted_machine_gives_notice_then_is_gone(make: Make) -> None:
    provider = make("simulated", name="p13", boot_delay=NEVER_BOOTS, preempt_notice="0.5s")
    ids = [x.provider_id for x in provider.launch(_requests(31, 32))]
    (tree,) = [_tree(m) for k, m in _machines(provider).items() if k == ids[0]]
    provider.preempt([ids[0]])
    assert provider.describe(ids) == {ids[0]: PREEMPTING, ids[1]: PENDING}
    assert all(_alive(*p) for p in tree)
    time.sleep(0.6)
    assert provider.describe(ids) == {ids[0]: GONE, ids[1]: PENDING}
    assert not any(_alive(*p) for p in tree)
    (usage,) = [u for u in provider.usage() if u.provider_id == ids[0]]
    assert usage.reason == "preempted"


def test_another_process_can_preempt_a_machine_through_a_file(make: Make, join: JoinInfo) -> None:
    provider = make("simulated", name="p14", boot_delay=NEVER_BOOTS, preempt_notice="10s")
    (launched,) = provider.launch(_requests(33))
    code = (
        "import sys, pathlib\n"
        "from clobi.manager.providers.simulated import request_preemption\n"
        "request_preemption(pathlib.Path(sys.argv[1]), 'p14', sys.argv[2])\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(join.session_root), launched.provider_id], check=True
    )
    assert provider.preempt_trigger(launched.provider_id).exists()
    assert provider.describe([launched.provider_id]) == {launched.provider_id: PREEMPTING}
    assert not provider.preempt_trigger(launched.provider_id).exists()
    request_preemption(join.session_root, "p14", "sim-999")  # unknown: ignored
    assert provider.describe(["sim-999"]) == {"sim-999": GONE}


def test_the_cost_bills_each_machine_from_launch_to_end_at_the_pool_rate(make: Make) -> None:
    now = [1000.0]
    provider = make(
        "simulated", name="p15", cost_per_hour=2.0, boot_delay=NEVER_BOOTS, clock=lambda: now[0]
    )
    a, b = (x.provider_id for x in provider.launch(_requests(34, 35)))
    assert provider.cost() == 0.0
    now[0] = 1000.0 + 1800
    assert provider.cost() == pytest.approx(2 * 0.5 * 2.0)
    now[0] = 1000.0 + 3600
    provider.terminate([a])
    assert provider.cost(now=1000.0 + 7200) == pytest.approx((1 + 2) * 2.0)
    usage = {u.provider_id: u for u in provider.usage()}
    assert (usage[a].launched_at, usage[a].ended_at, usage[a].reason) == (
        1000.0,
        4600.0,
        "terminated",
    )
    assert usage[b].ended_at is None


def test_a_restarted_manager_keeps_the_bill_of_ended_machines(make: Make) -> None:
    now = [0.0]
    first = make("simulated", name="p16", cost_per_hour=1.0, boot_delay=NEVER_BOOTS,
                 clock=lambda: now[0])  # fmt: skip
    (launched,) = first.launch(_requests(36))
    now[0] = 3600.0
    first.terminate([launched.provider_id])
    second = make("simulated", name="p16", cost_per_hour=1.0, clock=lambda: now[0])
    assert second.cost(now=7200.0) == pytest.approx(1.0)


def test_settings_are_checked_with_every_problem_by_key(join: JoinInfo) -> None:
    good = {"boot_delay": "5s", "quota": 3, "failure_rate": 0.2, "seed": 1, "preempt_notice": 2}
    assert SimulatedProvider.check_settings(good) == []
    bad = {
        "boot_delay": "soon",
        "quota": -1,
        "failure_rate": 1.5,
        "seed": "x",
        "preempt_notice": True,
        "zone": "eu",
    }
    problems = SimulatedProvider.check_settings(bad)
    assert sorted(p.split(":")[0] for p in problems) == sorted(bad)
    assert LocalProvider.check_settings({"python": "/usr/bin/python3"}) == []
    assert [p.split(":")[0] for p in LocalProvider.check_settings({"python": 3, "x": 1})] == [
        "x",
        "python",
    ]
    pool = PoolSpec(name="c", provider="simulated", settings={"quota": -1})
    with pytest.raises(ConfigError, match=r"pools\.c\.quota"):
        SimulatedProvider(pool, join)


def test_the_bootstrap_token_reaches_a_server_agent_only_through_its_environment(
    session: Session, tmp_path: Path
) -> None:
    remote = JoinInfo(url="http://127.0.0.1:9", session_root=session.root, python=sys.executable)
    pool = PoolSpec("p17", "simulated", cpus=1, settings={"boot_delay": NEVER_BOOTS})
    sim = SimulatedProvider(pool, remote)
    local = LocalProvider(PoolSpec("p18", "local", cpus=1), remote)
    try:
        sim.launch(_requests(40))
        (machine,) = _machines(sim).values()
        assert b"boot-secret" not in machine.cmdline()
        environ = Path(f"/proc/{machine.pid}/environ").read_bytes().split(b"\0")
        assert b"CLOBI_TOKEN=boot-secret-40" in environ
        # Nothing listens there: the agent says so in its log and exits, without the token.
        (launched,) = local.launch(_requests(41))
        wait_for(lambda: local.describe([launched.provider_id])[launched.provider_id] is GONE, 20)
        log = local.log_path(41).read_text()
        assert "cannot connect" in log and "boot-secret" not in log
    finally:
        sim.terminate(list(_machines(sim)))
        local.terminate(list(_machines(local)))


def test_a_state_file_written_before_a_reboot_knows_no_machine(make: Make, join: JoinInfo) -> None:
    me = localproc.read_stat(os.getpid())
    assert me is not None
    entry = {"instance_id": 50, "pid": os.getpid(), "start_ticks": me.start_ticks, "launched_at": 0}
    state = {"version": 1, "boot_id": "another-boot", "machines": {"local-50": entry}}
    path = join.session_root / "manager" / "local" / "p19.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state))
    assert make("local", name="p19").describe(["local-50"]) == {"local-50": GONE}
    assert json.loads(path.read_text())["machines"] == {}


def test_an_unreadable_state_file_is_a_provider_error(make: Make, join: JoinInfo) -> None:
    path = join.session_root / "manager" / "local" / "p20.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    with pytest.raises(ProviderError, match="not a provider state file"):
        make("local", name="p20").describe(["local-1"])
