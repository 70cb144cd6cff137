"""The agent's reports and claims commit on the side: its slots keep running claimed jobs
while a commit is slow (an fsync, a server far away), and nothing is lost or doubled."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clobi.agent.loop import Agent, AgentOptions
from clobi.client import Client
from clobi.errors import StoreUnavailable
from clobi.model.records import Claim, Outcome
from clobi.model.states import JobState
from clobi.store.base import ClaimRequest
from tests.acceptance.harness import fast_session

JOBS = 60


class SlowReports:
    """The session's store, with every report taking `delay_s` longer; for each report it
    notes how many jobs had written their line when it began and when it ended."""

    def __init__(self, store: Any, lines: Path, delay_s: float, failures: int = 0) -> None:
        self._store, self._lines, self._delay_s = store, lines, delay_s
        self.failures = failures
        self.spans: list[tuple[int, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def _count(self) -> int:
        return len(self._lines.read_text().split()) if self._lines.exists() else 0

    def finish(
        self, agent_id: int, outcomes: Sequence[Outcome], then: ClaimRequest | None = None
    ) -> tuple[list[int], list[Claim]]:
        before = self._count()
        time.sleep(self._delay_s)
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailable("store unavailable (test)")
        result = self._store.finish(agent_id, outcomes, then)
        self.spans.append((before, self._count()))
        return result  # type: ignore[no-any-return]


def run_agent_on(tmp_path: Path, failures: int = 0) -> tuple[SlowReports, Client]:
    session = fast_session(tmp_path / "s", lease_s=30.0, heartbeat_s=1.0)
    lines = tmp_path / "lines"
    client = Client(session)
    ids = client.submit(
        {"command": ["sh", "-c", f"echo $CLOBI_JOB_ID >> {lines}"], "array": {"count": JOBS}}
    )
    session.work_dir.mkdir(parents=True, exist_ok=True)
    store = SlowReports(session.open_store(), lines, delay_s=0.15, failures=failures)
    agent = Agent(session, store, session.open_sandbox(), AgentOptions(cpus=1))  # type: ignore[arg-type]
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while sum(v for s, v in client.counts(ids).items() if s.terminal) < JOBS:
        assert time.monotonic() < deadline, client.counts(ids)
        time.sleep(0.05)
    agent.draining.set()
    thread.join(timeout=30)
    assert not thread.is_alive()
    store.close()
    return store, client


def test_an_agent_keeps_running_claimed_jobs_while_a_report_is_slow_to_commit(
    tmp_path: Path,
) -> None:
    store, client = run_agent_on(tmp_path)
    # One slot: done inline, a report lets at most the one job started before it run.
    assert max(after - before for before, after in store.spans) >= 3, store.spans
    assert client.counts()[JobState.SUCCEEDED] == JOBS
    ran = (tmp_path / "lines").read_text().split()
    assert len(ran) == len(set(ran)) == JOBS
    client.close()


def test_reports_that_fail_on_the_side_are_sent_again_and_nothing_is_lost_or_doubled(
    tmp_path: Path,
) -> None:
    store, client = run_agent_on(tmp_path, failures=3)
    assert store.failures == 0  # the failures happened
    assert client.counts()[JobState.SUCCEEDED] == JOBS
    ran = (tmp_path / "lines").read_text().split()
    assert len(ran) == len(set(ran)) == JOBS  # every job ran once: no report was lost
    for job in client.list(limit=JOBS):
        assert job.attempts == 1, job
    client.close()
