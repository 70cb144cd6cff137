"""When an agent claims ahead and when it reports: pure rules, no I/O.

Long jobs are claimed only up to the agent's free slots and reported the moment they end. Very
short jobs make the store's commit the bottleneck, so once the agent has seen that its jobs are
short it holds a backlog of claimed jobs (started from memory as slots free up) and reports
finished ones in groups: one transaction then records many outcomes and claims many jobs. The
backlog holds at most `BACKLOG_S` of work per slot (and `PREFETCH_MAX_PER_SLOT` jobs), so jobs
an agent holds ahead are never long out of reach of other agents or of a more urgent job
submitted later. A finished job's report never waits longer than `REPORT_DELAY_S`, and a lone
job (nothing else to run) is reported at once.

Deeper is cheaper per job: every call has a fixed cost (a transaction; through a server, an
HTTP request too). Measured with 2 agents on 2 cores draining `/bin/true`: 16 jobs ahead per
slot ran 1,500 jobs/s embedded and 740 shared; 64 ran 1,750 and 1,070.
"""

from __future__ import annotations

from dataclasses import dataclass

SHORT_JOB_S = 0.05  # jobs faster than this are worth batching
PREFETCH_MAX_PER_SLOT = 64  # backlog depth per slot for the shortest jobs
BACKLOG_S = 0.25  # at most this much work (by the typical job's time) held ahead per slot
REPORT_DELAY_S = 0.02  # longest a finished short job waits for company
_EWMA_WEIGHT = 0.2


@dataclass
class Pace:
    """What the agent has learnt about its jobs' durations."""

    slots: int
    typical_s: float | None = None
    prefetch: int = 0  # jobs to hold ahead per slot: none until jobs are known to be short

    def __post_init__(self) -> None:
        self._update()

    def observe(self, runtime_s: float) -> None:
        """Fold one finished job's wall time into the running estimate."""
        if self.typical_s is None:
            self.typical_s = runtime_s
        else:
            self.typical_s += _EWMA_WEIGHT * (runtime_s - self.typical_s)
        self._update()

    @property
    def short(self) -> bool:
        return self.typical_s is not None and self.typical_s < SHORT_JOB_S

    def _update(self) -> None:
        # Kept up to date here: the loop asks several times a turn.
        if self.typical_s is None or not self.short:
            self.prefetch = 0
        else:
            ahead = int(BACKLOG_S / max(self.typical_s, 1e-6))
            self.prefetch = max(1, min(PREFETCH_MAX_PER_SLOT, ahead))

    @property
    def factor(self) -> int:
        """How many slots' worth of jobs to hold (running plus backlog), per slot."""
        return 1 + self.prefetch

    @property
    def batch(self) -> int:
        """Jobs per claim, and outcomes per report, once jobs are short."""
        return max(1, self.slots * self.prefetch // 2)

    def claim_size(self, held: int) -> int:
        """How many jobs to claim now, holding `held` (running + backlog); 0 = not yet."""
        room = self.slots * self.factor - held
        low_water = self.batch if self.short else 1
        return room if room >= low_water else 0

    def report_due(self, pending: int, oldest_age_s: float, backlog: int) -> bool:
        """Whether to send the `pending` finished outcomes now."""
        if pending == 0:
            return False
        if not self.short or backlog < self.slots:
            return True
        return pending >= self.batch or oldest_age_s >= REPORT_DELAY_S
