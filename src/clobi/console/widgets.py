"""The console's panels: the queue, the pools with their instances and agents, the manager's
decisions, and the question asked before a hard kill.

Everything shown comes from the store or clobi.toml, so it goes in as `Text`, never as markup.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Static

from clobi.console.backend import Snapshot, Target
from clobi.manager.control import PoolStatus
from clobi.model.instances import InstanceRecord, InstanceState
from clobi.model.records import AgentRecord
from clobi.model.states import JobState

STATE_STYLES = {
    InstanceState.REQUESTED: "yellow",
    InstanceState.BOOTING: "yellow",
    InstanceState.RUNNING: "green",
    InstanceState.DRAINING: "cyan",
    InstanceState.TERMINATING: "red",
}
Row = tuple[str, tuple[Text, ...]]  # (key, cells)


def plain(value: object) -> str:
    """One line of printable text (control characters escaped)."""
    text = "" if value is None else str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def clock(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    fmt = "%H:%M:%S" if now - ts < 20 * 3600 else "%Y-%m-%d %H:%M"
    return time.strftime(fmt, time.localtime(ts))


class QueuePanel(Static):
    """Claimable queued jobs by priority (highest first, as agents take them), then every
    job state's total."""

    def show(self, snap: Snapshot) -> None:
        table = Table("priority", "queued", box=None, padding=(0, 1), expand=True)
        for priority, count in snap.queued_by_priority:
            table.add_row(str(priority), str(count))
        claimable = sum(count for _, count in snap.queued_by_priority)
        table.add_row(Text("total", style="bold"), Text(str(claimable), style="bold"))
        lines = [table if snap.queued_by_priority else Text("nothing queued", style="dim")]
        waiting = snap.states.get(JobState.QUEUED, 0) - claimable
        if waiting > 0:
            lines.append(Text(f"{waiting} backing off before a retry", style="yellow"))
        lines.append(Text("\njobs", style="bold"))
        for state in JobState:
            if snap.states.get(state):
                lines.append(Text(f"{state.value:<10} {snap.states[state]:>7}"))
        self.update(Group(*lines))


class PoolTable(DataTable[Text]):
    """One row per pool, then a row per live instance and per agent without an instance;
    the cursor picks what the keys act on and stays on it across refreshes."""

    COLUMNS = ("pool / machine", "state", "agents / jobs", "bounds / up", "cost", "provider", "why")

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._shown: list[Row] = []

    def on_mount(self) -> None:
        self.add_columns(*self.COLUMNS)

    def show(self, snap: Snapshot) -> None:
        rows = list(_rows(snap))
        if rows == self._shown:
            return
        chosen = self.chosen_key()
        self.clear()
        for key, cells in rows:
            self.add_row(*cells, key=key)
        self._shown = rows
        keys = [key for key, _ in rows]
        if chosen in keys:
            self.move_cursor(row=keys.index(chosen), animate=False)

    def chosen_key(self) -> str | None:
        if not self.row_count:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        return str(key) if key is not None else None

    def target(self) -> Target | None:
        """The pool or instance under the cursor (None on an agent row or with no rows)."""
        key = self.chosen_key() or ""
        kind, _, rest = key.partition(":")
        if kind == "pool":
            return Target(rest)
        if kind == "instance":
            pool, _, instance_id = rest.rpartition(":")
            return Target(pool, int(instance_id))
        return None


def _rows(snap: Snapshot) -> Iterator[Row]:
    now = snap.taken_at
    for status in snap.pools:
        yield f"pool:{status.pool.name}", _pool_cells(status)
        agents = {a.id: a for a in status.agents}
        for inst in status.instances:
            agent = agents.pop(inst.agent_id, None) if inst.agent_id is not None else None
            yield f"instance:{inst.pool}:{inst.id}", _instance_cells(inst, agent, now)
        for agent in agents.values():
            yield f"agent:{agent.id}", _agent_cells(agent)
    if snap.strays:
        cells = ("other agents", "", _count(len(snap.strays), "agent"), "", "", "", "no pool")
        yield "strays", tuple(Text(c, style="bold") for c in cells)
        for agent in snap.strays:
            yield f"agent:{agent.id}", _agent_cells(agent)


def _pool_cells(s: PoolStatus) -> tuple[Text, ...]:
    p = s.pool
    counts: dict[InstanceState, int] = {}
    for inst in s.instances:
        counts[inst.state] = counts.get(inst.state, 0) + 1
    states = Text(", ").join(
        Text(f"{n} {state.value}", style=STATE_STYLES.get(state, "")) for state, n in counts.items()
    )
    return (
        Text(plain(p.name), style="bold"),
        states or Text("no instances", style="dim"),
        Text(f"{_count(len(s.agents), 'agent')}, {s.busy_agents} busy"),
        Text(f"min {p.min}, max {p.max}", style="bold"),
        Text(f"{s.cost:.4f} ({p.cost_per_hour:.2f}/h)"),
        Text(plain(p.provider)),
        Text(""),
    )


def _instance_cells(
    inst: InstanceRecord, agent: AgentRecord | None, now: float
) -> tuple[Text, ...]:
    if agent is not None:
        jobs = f"agent {agent.id}: {_count(agent.running, 'job')}"
        jobs += ", draining" if agent.drain else ""
    else:
        jobs = f"agent {inst.agent_id} (gone)" if inst.agent_id is not None else "no agent yet"
    return (
        Text(f"  instance {inst.id}"),
        Text(inst.state.value, style=STATE_STYLES.get(inst.state, "")),
        Text(jobs),
        Text(clock(inst.launched_at, now)),
        Text(f"{inst.cost(now):.4f}"),
        Text(plain(inst.provider_id) or "-"),
        Text(plain(inst.reason)),
    )


def _agent_cells(agent: AgentRecord) -> tuple[Text, ...]:
    state = agent.state + (", draining" if agent.drain else "")
    return (
        Text(f"  agent {agent.id}"),
        Text(plain(state), style="cyan" if agent.drain else "green"),
        Text(_count(agent.running, "job")),
        Text(f"{agent.cpus:g} cpus"),
        Text(""),
        Text(plain(f"{agent.name}@{agent.host}")),
        Text("started by hand" if agent.instance_id is None else ""),
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


class DecisionLog(Static):
    """The manager's decisions with their reasons, newest first."""

    def show(self, snap: Snapshot) -> None:
        if not snap.decisions:
            self.update(Text("no decisions yet (is `clobi manager` running?)", style="dim"))
            return
        lines = Text()
        for e in snap.decisions:
            kind = e.kind.removeprefix("manager_")
            lines.append(f"{clock(e.ts, snap.taken_at)}  ", style="dim")
            lines.append(f"{kind:<10} ", style="bold")
            lines.append(plain(e.detail) + "\n")
        lines.rstrip()
        self.update(lines)


class ConfirmKill(ModalScreen[bool]):
    """Asks before a hard kill: y or the button kills, n or escape does not."""

    BINDINGS = [  # noqa: RUF012 (textual's own declaration style)
        Binding("y", "answer(True)", "kill"),
        Binding("n,escape", "answer(False)", "cancel"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm"):
            yield Static(Text(self.question), id="question")
            with Horizontal(id="buttons"):
                yield Button("Kill (y)", variant="error", id="yes")
                yield Button("Cancel (n)", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, kill: bool) -> None:
        self.dismiss(kill)
