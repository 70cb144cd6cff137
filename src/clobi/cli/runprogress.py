"""How far a `clobi run` is: a rich progress bar on a terminal, else a line now and then.

Everything goes to stderr, so stdout keeps only the summary.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

from clobi.cli.output import fmt_counts
from clobi.model.states import JobState

LINE_INTERVAL_S = 5.0  # at most one progress line this often when stderr is not a terminal


class RunProgress:
    """Call `update(counts)` with the run's job counts; use as a context manager."""

    def __init__(self, total: int, *, quiet: bool = False) -> None:
        self.total = total
        self.quiet = quiet
        self._bar: Any = None  # rich.progress.Progress, imported only when used
        self._task: Any = None
        self._last_line_s = 0.0
        self._last_text = ""

    def __enter__(self) -> RunProgress:
        if not self.quiet and sys.stderr.isatty():
            self._start_bar()
        return self

    def __exit__(self, *_: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._bar = Progress(
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=Console(stderr=True),
        )
        self._task = self._bar.add_task("starting", total=self.total)
        self._bar.start()

    def update(self, counts: Mapping[JobState, int]) -> None:
        done = sum(n for state, n in counts.items() if state.terminal)
        text = fmt_counts(counts)
        if self._bar is not None:
            self._bar.update(self._task, completed=done, description=text)
        elif not self.quiet:
            self._line(done, text)

    def _line(self, done: int, text: str) -> None:
        now = time.monotonic()
        if text == self._last_text or now - self._last_line_s < LINE_INTERVAL_S:
            return
        self._last_line_s, self._last_text = now, text
        print(f"clobi: {done}/{self.total} done ({text})", file=sys.stderr, flush=True)
