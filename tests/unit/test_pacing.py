from __future__ import annotations

import pytest

from clobi.agent.pacing import BACKLOG_S, PREFETCH_MAX_PER_SLOT, REPORT_DELAY_S, Pace


def short_pace(slots: int = 2) -> Pace:
    pace = Pace(slots=slots)
    for _ in range(5):
        pace.observe(0.001)
    return pace


def test_an_agent_that_has_seen_no_job_claims_only_its_free_slots() -> None:
    pace = Pace(slots=2)
    assert not pace.short
    assert pace.claim_size(held=0) == 2
    assert pace.claim_size(held=1) == 1
    assert pace.claim_size(held=2) == 0


def test_long_jobs_are_never_claimed_ahead_and_reported_at_once() -> None:
    pace = Pace(slots=2)
    pace.observe(3.0)
    assert pace.claim_size(held=2) == 0
    assert pace.report_due(pending=1, oldest_age_s=0.0, backlog=10)


def test_short_jobs_are_claimed_ahead_in_batches_not_one_by_one() -> None:
    pace = short_pace(slots=2)
    full = 2 * (1 + PREFETCH_MAX_PER_SLOT)
    assert pace.claim_size(held=0) == full
    assert pace.claim_size(held=full - 1) == 0  # one missing: wait for a real batch
    assert pace.claim_size(held=full - PREFETCH_MAX_PER_SLOT) == PREFETCH_MAX_PER_SLOT


@pytest.mark.parametrize(
    ("pending", "age_s", "backlog", "due"),
    [
        (0, 1.0, 0, False),  # nothing to report
        (1, 0.0, 10, False),  # short jobs keep running from the backlog: wait for company
        (1, REPORT_DELAY_S, 10, True),  # but never longer than the delay
        (PREFETCH_MAX_PER_SLOT, 0.0, 10, True),  # a full batch (2 slots × 64 / 2) goes at once
        (PREFETCH_MAX_PER_SLOT - 1, 0.0, 10, False),
        (1, 0.0, 1, True),  # the backlog runs low: report and refill together
    ],
)
def test_when_short_jobs_are_reported(pending: int, age_s: float, backlog: int, due: bool) -> None:
    assert short_pace().report_due(pending, age_s, backlog) is due


def test_the_estimate_follows_a_change_from_short_to_long_jobs() -> None:
    pace = short_pace()
    for _ in range(20):
        pace.observe(2.0)
    assert not pace.short


@pytest.mark.parametrize(("typical_s", "ahead"), [(0.001, 64), (0.01, 25), (0.04, 6)])
def test_the_backlog_holds_at_most_a_quarter_second_of_work_per_slot(
    typical_s: float, ahead: int
) -> None:
    pace = Pace(slots=4)
    for _ in range(5):
        pace.observe(typical_s)
    assert pace.claim_size(held=0) == 4 * (1 + ahead)
    assert ahead * typical_s <= BACKLOG_S + 1e-9
