"""Job and attempt states and the allowed transitions between them."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


class AttemptState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    LOST = "lost"


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.TIMED_OUT, JobState.CANCELLED})

# to-state -> states a job may leave for it. Terminal states are absorbing except that
# `retry` (a user action) moves a finished job back to queued.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.RUNNING: frozenset({JobState.QUEUED}),
    JobState.QUEUED: frozenset({JobState.RUNNING}),
    JobState.SUCCEEDED: frozenset({JobState.RUNNING}),
    JobState.FAILED: frozenset({JobState.RUNNING, JobState.QUEUED}),
    JobState.TIMED_OUT: frozenset({JobState.RUNNING}),
    JobState.CANCELLED: frozenset({JobState.QUEUED, JobState.RUNNING}),
}

RETRYABLE_FROM = frozenset({JobState.FAILED, JobState.TIMED_OUT, JobState.CANCELLED})
REMOVABLE = frozenset({JobState.QUEUED}) | TERMINAL


def may_move(from_state: JobState, to_state: JobState) -> bool:
    """True when the transition table allows `from_state -> to_state`."""
    return from_state in TRANSITIONS.get(to_state, frozenset())


def job_state_for(attempt_state: AttemptState) -> JobState:
    """The job state a finished attempt leads to when it is not retried."""
    return {
        AttemptState.SUCCEEDED: JobState.SUCCEEDED,
        AttemptState.FAILED: JobState.FAILED,
        AttemptState.TIMED_OUT: JobState.TIMED_OUT,
        AttemptState.CANCELLED: JobState.CANCELLED,
        AttemptState.LOST: JobState.QUEUED,
    }[attempt_state]
