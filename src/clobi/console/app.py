"""`clobi top`: the resource manager's console, after the 2009 Resource Manager's: the queue by
priority, the pools with their machines and agents, the manager's decisions as they are made,
and keys to scale a pool, drain (soft kill) and hard kill.

Store calls block, so each refresh and each action runs in a worker thread (`Backend`); the UI
thread only lays out what they return. Errors are shown in the status line, never as a
traceback: a monitor should outlive a busy store or a bad edit of clobi.toml.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from importlib import resources

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.css.query import NoMatches
from textual.widgets import Footer, Header, Static
from textual.worker import Worker, WorkerState

from clobi.console.backend import Backend, Snapshot, Target
from clobi.console.widgets import ConfirmKill, DecisionLog, PoolTable, QueuePanel
from clobi.errors import ClobiError

REFRESH_S = 1.0
NO_POOLS = "no pools declared: add [pools.NAME] tables to clobi.toml (`clobi pool ls` shows them)"


def describe(exc: BaseException) -> str:
    """An error as one message for the status line, with its causes."""
    if isinstance(exc, ClobiError):
        text = exc.message
    elif isinstance(exc, OSError):
        text = str(exc)
    else:
        text = f"internal error: {type(exc).__name__}: {exc}"
    cause = exc.__cause__
    while cause is not None:
        text += f" (caused by: {cause})"
        cause = cause.__cause__
    return text


class ConsoleApp(App[None]):
    """The console of one session; `backend` does the blocking work."""

    TITLE = "clobi top"
    CSS = resources.files("clobi.console").joinpath("console.tcss").read_text(encoding="utf-8")
    BINDINGS = [  # noqa: RUF012 (textual's own declaration style)
        Binding("plus,equals_sign", "change_max(1)", "max+1"),
        Binding("minus", "change_max(-1)", "max-1"),
        Binding("d", "drain", "drain"),
        Binding("k", "kill", "kill"),
        Binding("r", "refresh", "refresh"),
        Binding("q", "quit", "quit"),
    ]

    def __init__(self, backend: Backend, refresh_s: float = REFRESH_S) -> None:
        super().__init__()
        self.backend = backend
        self.refresh_s = refresh_s
        self.snapshot: Snapshot | None = None
        self._refreshing = False
        self._message: tuple[str, bool] = ("", False)  # (text, is an error)

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="top"):
            yield QueuePanel(id="queue")
            with VerticalScroll(id="pools"):
                yield Static(id="pools-note")
                yield PoolTable(id="pool-table")
        with VerticalScroll(id="decisions"):
            yield DecisionLog(id="decision-log")
        yield Static(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.main = self.screen  # refreshes go here even while a question is asked on top
        self.sub_title = str(self.backend.session.root)
        self.main.query_one("#queue").border_title = "queue"
        self.main.query_one("#pools").border_title = "pools, instances and agents"
        self.main.query_one("#decisions").border_title = "manager decisions, newest first"
        self.main.query_one(PoolTable).focus()
        self.action_refresh()
        self.set_interval(self.refresh_s, self.action_refresh)

    # --- refreshing ----------------------------------------------------------------------
    def action_refresh(self) -> None:
        if self._refreshing:  # the last one is still reading; never queue up behind it
            return
        self._refreshing = True
        self.run_worker(self.backend.snapshot, name="refresh", thread=True, exit_on_error=False)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state not in (WorkerState.SUCCESS, WorkerState.ERROR):
            return
        with contextlib.suppress(NoMatches):  # the app is closing: its widgets are gone
            self._finished(event.worker, event.state)

    def _finished(self, worker: Worker[object], state: WorkerState) -> None:
        if worker.name == "refresh":
            self._refreshing = False
            if state is WorkerState.SUCCESS and isinstance(worker.result, Snapshot):
                self._show(worker.result)
            else:
                self._show_error(f"cannot read the session: {describe(_error(worker))}")
        elif state is WorkerState.SUCCESS:
            self.say(str(worker.result))
            self.action_refresh()
        else:
            self.say(describe(_error(worker)), error=True)

    def _show(self, snap: Snapshot) -> None:
        self.snapshot = snap
        self.main.query_one(QueuePanel).show(snap)
        self.main.query_one(PoolTable).show(snap)
        self.main.query_one(DecisionLog).show(snap)
        note = "\n".join(snap.problems) or ("" if snap.pools else NO_POOLS)
        self.main.query_one("#pools-note", Static).update(Text(note, style="bold yellow"))
        self.main.query_one("#pools-note").display = bool(note)
        self.sub_title = f"{self.backend.session.root} · {time.strftime('%H:%M:%S')}"
        self._paint_status()

    def _show_error(self, text: str) -> None:
        self.sub_title = f"{self.backend.session.root} · not refreshed"
        self.main.query_one("#status", Static).update(Text(text, style="bold red"))

    def say(self, text: str, error: bool = False) -> None:
        """Put a message in the status line (it stays until the next one)."""
        self._message = (text, error)
        self._paint_status()

    def _paint_status(self) -> None:
        text, error = self._message
        self.main.query_one("#status", Static).update(Text(text, style="bold red" if error else ""))

    # --- acting --------------------------------------------------------------------------
    def _act(self, work: Callable[[], str]) -> None:
        self.run_worker(work, name="action", group="actions", thread=True, exit_on_error=False)

    def _target(self, whole_pool: bool = False) -> Target | None:
        target = self.main.query_one(PoolTable).target()
        if target is None:
            self.say("select a pool or one of its instances (agents started by hand are "
                     "stopped where they run)", error=True)  # fmt: skip
            return None
        return Target(target.pool) if whole_pool else target

    def action_change_max(self, delta: int) -> None:
        target = self._target(whole_pool=True)
        if target is not None:
            self._act(lambda: self.backend.change_max(target.pool, delta))

    def action_drain(self) -> None:
        target = self._target()
        if target is not None:
            self._act(lambda: self.backend.drain(target))

    def action_kill(self) -> None:
        target = self._target()
        if target is None:
            return
        if target.instance_id is None:
            question = (
                f"Hard kill every instance of pool {target.pool} now? Their running jobs are "
                "requeued, and the pool's min and max are set to 0 in clobi.toml."
            )
        else:
            question = f"Hard kill {target.describe()} now? Its running jobs are requeued."

        def answered(kill: bool | None) -> None:
            if kill:
                self._act(lambda: self.backend.kill(target))
            else:
                self.say("not killed")

        self.push_screen(ConfirmKill(question), answered)


def _error(worker: Worker[object]) -> BaseException:
    return worker.error if worker.error is not None else RuntimeError("the worker stopped")
