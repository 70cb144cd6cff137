"""`clobi top` on a real embedded session, driven headless through Textual's pilot: what the
screen shows (read back from its SVG screenshot, which is kept as an artifact) and what its keys
do to the store and to clobi.toml."""

from __future__ import annotations

import asyncio
import html
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from textual.pilot import Pilot

from clobi.console.app import ConsoleApp
from clobi.console.backend import Backend
from clobi.errors import MissingExtra, StoreUnavailable, UsageError
from clobi.manager.config import read_pools
from clobi.model.instances import InstanceState
from clobi.model.records import Capacity
from clobi.model.states import JobState
from clobi.session import Session
from clobi.store.base import ClaimRequest, Store
from tests.acceptance.harness import fast_session
from tests.conftest import make_agent, make_submission

POOLS = """
[pools.cloud]
provider = "simulated"
cpus = 2
max = 4
cost_per_hour = 0.10

[pools.owned]
provider = "local"
cpus = 4
max = 1
"""
DECISION = "pool cloud: launch 2: 3 jobs of [1 cpu] wait and no agent is free"
SIZE = (150, 40)


@dataclass
class Scene:
    """A session with two pools: cloud has two running instances (agents joined, the first
    one running a job) and one just requested; jobs wait at priorities 10, 5 and 0."""

    session: Session
    store: Store
    running: list[int]  # instance ids
    requested: int
    busy_job: int

    @property
    def config(self) -> Path:
        return self.session.root / "clobi.toml"

    def instance_states(self) -> dict[int, InstanceState]:
        found = self.store.list_instances("cloud", include_ended=True)
        return {i.id: i.state for i in found}


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    session = fast_session(tmp_path / "s")
    session.root.joinpath("clobi.toml").write_text(
        session.root.joinpath("clobi.toml").read_text() + POOLS
    )
    store = session.open_store()
    running = [_running_instance(store, f"cloud-{n}") for n in range(2)]
    requested = store.create_instance("cloud", "simulated", 0.10, "launch").id
    (busy_job,) = store.submit(make_submission(priority=1, name="busy"))
    agent_id = store.list_instances("cloud")[0].agent_id
    assert agent_id is not None
    claim = ClaimRequest(agent_id, Capacity(2, 4 << 30), limit=1, lease_s=60)
    assert [c.job_id for c in store.claim(claim)] == [busy_job]
    for priority, count in ((10, 1), (5, 2), (0, 3)):
        store.submit(make_submission(priority=priority, count=count))
    store.record_event("manager_launch", DECISION)
    yield Scene(session, store, running, requested, busy_job)
    store.close()


def _running_instance(store: Store, name: str) -> int:
    inst = store.create_instance("cloud", "simulated", 0.10, "launch")
    store.set_instance(inst.id, InstanceState.BOOTING, "booting", provider_id=f"sim-{name}")
    store.register_agent(make_agent(name, cpus=2, pool="cloud", instance_id=inst.id))
    store.set_instance(inst.id, InstanceState.RUNNING, "its agent joined")
    return inst.id


# --- driving the console ---------------------------------------------------------------------
Script = Callable[[ConsoleApp, Pilot[None]], Awaitable[None]]


def drive(session: Session, script: Script, backend: Backend | None = None) -> None:
    """Run the console headless on `session`, once it has shown the session, through `script`."""

    async def run() -> None:
        app = ConsoleApp(backend or Backend(session), refresh_s=0.2)
        try:
            async with app.run_test(size=SIZE) as pilot:
                await until(pilot, lambda: app.snapshot is not None, "the first refresh")
                await pilot.pause()  # let the screen lay out what the refresh brought
                await script(app, pilot)
        finally:
            app.backend.close()

    asyncio.run(run())


async def until(pilot: Pilot[None], check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within 10 s")
        await pilot.pause(0.05)


_TEXT = re.compile(r'<text [^>]*x="([\d.]+)"[^>]*textLength="([\d.]+)"[^>]*line-(\d+)\)">([^<]*)<')


def screen_text(app: ConsoleApp) -> str:
    """What the screen shows, as lines of text, rebuilt from its SVG screenshot."""
    rows: dict[int, dict[int, str]] = {}
    for x, length, line, raw in _TEXT.findall(app.export_screenshot()):
        text = html.unescape(raw).replace("\xa0", " ")
        cell = float(length) / len(text)
        for i, char in enumerate(text):
            rows.setdefault(int(line), {})[round(float(x) / cell) + i] = char
    width = max((max(r) for r in rows.values() if r), default=0) + 1
    return "\n".join(
        "".join(rows.get(n, {}).get(c, " ") for c in range(width)).rstrip()
        for n in range(max(rows, default=-1) + 1)
    )


def line_with(text: str, *parts: str) -> str:
    """The screen line holding every part, in order (with anything between them)."""
    pattern = r".*".join(re.escape(p) for p in parts)
    found = re.search(f"^.*{pattern}.*$", text, re.MULTILINE)
    assert found, f"no line with {parts} on the screen:\n{text}"
    return found.group(0)


async def shows(app: ConsoleApp, pilot: Pilot[None], words: str) -> None:
    await until(pilot, lambda: words in screen_text(app), f"the screen showing {words!r}")


# --- what it shows ---------------------------------------------------------------------------
def test_the_console_shows_the_queue_by_priority_the_pools_instances_and_the_decisions(
    scene: Scene, tmp_path: Path
) -> None:
    shown: list[str] = []

    async def look(app: ConsoleApp, pilot: Pilot[None]) -> None:
        app.save_screenshot("console.svg", path=str(tmp_path))
        shown.append(screen_text(app))

    drive(scene.session, look)
    text = shown[0]
    assert (tmp_path / "console.svg").read_text().startswith("<svg")
    # the queue, highest priority first, and the totals by state
    queue = [line_with(text, f"│  {p} ", str(n)) for p, n in ((10, 1), (5, 2), (0, 3))]
    assert [text.index(line) for line in queue] == sorted(text.index(line) for line in queue)
    line_with(text, "total", "6")
    line_with(text, "queued", "6")
    line_with(text, "running", "1")
    # the pools, their bounds, and each instance with its state and agent
    line_with(text, "cloud", "2 running, 1 requested", "2 agents, 1 busy", "min 0, max 4")
    line_with(text, f"instance {scene.running[0]}", "running", "1 job", "sim-cloud-0")
    line_with(text, f"instance {scene.running[1]}", "running", "0 jobs", "sim-cloud-1")
    line_with(text, f"instance {scene.requested}", "requested", "no agent yet")
    line_with(text, "owned", "no instances", "min 0, max 1")
    # the manager's decision, with its reason (markup-like text shown as it is)
    line_with(text, "launch", DECISION)


def test_a_new_decision_shows_first_at_the_next_refresh(scene: Scene) -> None:
    async def watch(app: ConsoleApp, pilot: Pilot[None]) -> None:
        scene.store.record_event("manager_drain", "pool cloud: drain 1: idle for 60s")
        await shows(app, pilot, "idle for 60s")
        text = screen_text(app)
        assert text.index("idle for 60s") < text.index(DECISION)

    drive(scene.session, watch)


def test_a_session_without_pools_says_how_to_declare_them(tmp_path: Path) -> None:
    session = fast_session(tmp_path / "s")

    async def look(app: ConsoleApp, pilot: Pilot[None]) -> None:
        text = screen_text(app)
        line_with(text, "no pools declared", "[pools.NAME]", "clobi.toml")
        line_with(text, "nothing queued")
        line_with(text, "no decisions yet")

    drive(session, look)


def test_a_broken_clobi_toml_is_named_on_screen_and_the_queue_still_shows(scene: Scene) -> None:
    scene.config.write_text(scene.config.read_text() + "\n[pools.bad]\ncpus = 2\n")

    async def look(app: ConsoleApp, pilot: Pilot[None]) -> None:
        text = screen_text(app)
        line_with(text, "pools.bad.provider", "missing")
        line_with(text, "total", "6")

    drive(scene.session, look)


class FailingStore:
    """A store that stops answering: what a locked or unreachable database looks like."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def __getattr__(self, name: str) -> object:
        if name == "close":
            return self.store.close
        raise StoreUnavailable("the store is busy (database is locked)")


def test_a_failing_store_is_a_message_on_screen_and_the_console_carries_on(scene: Scene) -> None:
    backend = Backend(scene.session)
    backend._store = FailingStore(scene.session.open_store())  # type: ignore[assignment]

    async def look(app: ConsoleApp, pilot: Pilot[None]) -> None:
        await shows(app, pilot, "database is locked")
        line_with(screen_text(app), "cannot read the session", "the store is busy")
        backend._store = scene.session.open_store()  # the store answers again
        await until(pilot, lambda: app.snapshot is not None, "a refresh")
        await until(pilot, lambda: "instance" in screen_text(app), "the pools")

    async def run() -> None:
        app = ConsoleApp(backend, refresh_s=0.2)
        try:
            async with app.run_test(size=SIZE) as pilot:
                await look(app, pilot)
        finally:
            backend.close()

    asyncio.run(run())


# --- what its keys do ------------------------------------------------------------------------
def test_plus_and_minus_on_a_pool_change_its_max_in_clobi_toml(scene: Scene) -> None:
    async def press(app: ConsoleApp, pilot: Pilot[None]) -> None:
        await pilot.press("plus")
        await shows(app, pilot, "pool cloud: max 5")
        await until(pilot, lambda: "min 0, max 5" in screen_text(app), "the new max shown")
        await pilot.press("down", "minus", "minus")  # on an instance: its pool
        await until(pilot, lambda: read_pools(scene.config).pool("cloud").max == 3, "max 3")

    drive(scene.session, press)
    assert read_pools(scene.config).pool("cloud").max == 3
    assert "max = 3" in scene.config.read_text()
    assert (scene.session.root / "clobi.toml.bak").exists()


def test_d_on_a_pool_drains_all_its_instances_and_scales_it_to_zero(scene: Scene) -> None:
    async def press(app: ConsoleApp, pilot: Pilot[None]) -> None:
        await pilot.press("d")
        await shows(app, pilot, "pool cloud: draining 3 instances")
        await until(pilot, lambda: "3 draining" in screen_text(app), "the pool shown draining")

    drive(scene.session, press)
    assert set(scene.instance_states().values()) == {InstanceState.DRAINING}
    assert all(a.drain for a in scene.store.list_agents() if a.pool == "cloud")
    pool = read_pools(scene.config).pool("cloud")
    assert (pool.min, pool.max) == (0, 0)


def test_d_on_an_instance_drains_only_that_instance(scene: Scene) -> None:
    async def press(app: ConsoleApp, pilot: Pilot[None]) -> None:
        await pilot.press("down", "down", "d")
        await shows(app, pilot, f"instance {scene.running[1]} of pool cloud: draining 1")

    drive(scene.session, press)
    assert scene.instance_states() == {
        scene.running[0]: InstanceState.RUNNING,
        scene.running[1]: InstanceState.DRAINING,
        scene.requested: InstanceState.REQUESTED,
    }
    assert read_pools(scene.config).pool("cloud").max == 4


def test_k_asks_first_and_no_leaves_every_instance_as_it_was(scene: Scene) -> None:
    async def press(app: ConsoleApp, pilot: Pilot[None]) -> None:
        await pilot.press("k")
        await until(pilot, lambda: "Hard kill every instance" in screen_text(app), "the question")
        await pilot.press("n")
        await shows(app, pilot, "not killed")

    drive(scene.session, press)
    assert set(scene.instance_states().values()) == {InstanceState.RUNNING, InstanceState.REQUESTED}


def test_a_confirmed_kill_terminates_the_pool_s_instances_and_requeues_their_jobs(
    scene: Scene,
) -> None:
    async def press(app: ConsoleApp, pilot: Pilot[None]) -> None:
        await pilot.press("k")
        await until(pilot, lambda: "Hard kill every instance" in screen_text(app), "the question")
        await pilot.press("y")
        await shows(app, pilot, "pool cloud: killing 3 instances, 1 job requeued")

    drive(scene.session, press)
    assert set(scene.instance_states().values()) == {InstanceState.TERMINATING}
    assert scene.store.get_job(scene.busy_job).state is JobState.QUEUED
    assert read_pools(scene.config).pool("cloud").max == 0


# --- the command -------------------------------------------------------------------------------
def test_clobi_top_on_a_url_session_says_it_runs_where_clobi_toml_is(
    scene: Scene, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    import clobi.session
    from clobi.cli.top_cmd import top_cmd

    served = dataclasses.replace(scene.session, credentials=object())  # type: ignore[arg-type]
    monkeypatch.setattr(clobi.session, "find_session", lambda *_: served)
    with pytest.raises(UsageError, match=r"clobi top runs where the session's clobi\.toml is"):
        top_cmd(_args(scene.session))


def test_clobi_top_without_textual_names_the_extra_to_install(
    scene: Scene, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clobi.cli.top_cmd import top_cmd

    gone = ("textual", "textual.", "clobi.console.")
    for name in [m for m in sys.modules if m.startswith(gone)]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "textual", None)  # as if it were not installed
    with pytest.raises(MissingExtra, match=r"pip install 'clobi\[console\]'"):
        top_cmd(_args(scene.session))


def _args(session: Session) -> object:
    import argparse

    return argparse.Namespace(session=str(session.root))
