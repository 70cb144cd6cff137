"""When an agent claims ahead and when it reports: pure rules, no I/O.

Long jobs are claimed only up to the agent's free slots and reported the moment they end. Very
short jobs make the store's commit the bottleneck, so once the agent has seen that its jobs are
short it holds a small backlog of claimed jobs (started from memory as slots free up) and reports
finished ones in groups: one transaction then records many outcomes and claims many jobs. A
finished job's report never waits longer than `REPORT_DELAY_S`, and a lone job (nothing else to
run) is reported at once.
"""

from __future__ import annotations

from dataclasses import dataclass

SHORT_JOB_S = 0.05  # jobs faster than this are worth batching
PREFETCH_PER_SLOT = 16  # backlog depth per slot while jobs are short
REPORT_BATCH = 32  # report at once when this many outcomes wait
REPORT_DELAY_S = 0.02  # longest a finished short job waits for company
_EWMA_WEIGHT = 0.2


@dataclass
class Pace:
    """What the agent has learnt about its jobs' durations."""

    slots: int
    typical_s: float | None = None

    def observe(self, runtime_s: float) -> None:
        """Fold one finished job's wall time into the running estimate."""
        if self.typical_s is None:
            self.typical_s = runtime_s
        else:
            self.typical_s += _EWMA_WEIGHT * (runtime_s - self.typical_s)

    @property
    def short(self) -> bool:
        return self.typical_s is not None and self.typical_s < SHORT_JOB_S

    @property
    def factor(self) -> int:
        """How many slots' worth of jobs to hold (running plus backlog), per slot."""
        return 1 + PREFETCH_PER_SLOT if self.short else 1

    def claim_size(self, held: int) -> int:
        """How many jobs to claim now, holding `held` (running + backlog); 0 = not yet."""
        room = self.slots * self.factor - held
        low_water = max(1, self.slots * PREFETCH_PER_SLOT // 2) if self.short else 1
        return room if room >= low_water else 0

    def report_due(self, pending: int, oldest_age_s: float, backlog: int) -> bool:
        """Whether to send the `pending` finished outcomes now."""
        if pending == 0:
            return False
        if not self.short or backlog < self.slots:
            return True
        return pending >= REPORT_BATCH or oldest_age_s >= REPORT_DELAY_S
