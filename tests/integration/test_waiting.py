"""Waiting for jobs on an embedded session: woken by the store when jobs end, not by polling."""

from __future__ import annotations

import contextlib
import itertools
import select
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clobi import client as client_module
from clobi.client import Client
from clobi.model.records import Capacity, Outcome
from clobi.model.states import AttemptState, JobState
from clobi.session import init_session
from clobi.store.base import ClaimRequest
from tests.conftest import make_agent


def readable(fd: int, timeout_s: float) -> bool:
    return bool(select.select([fd], [], [], timeout_s)[0])


@contextlib.contextmanager
def killed_later(client: Client, job_id: int, after_s: float) -> Iterator[None]:
    """Another client of the session kills the job `after_s` from now."""

    def kill() -> None:
        with Client(client.session) as other:
            other.kill([job_id])

    killer = threading.Timer(after_s, kill)
    killer.start()
    try:
        yield
    finally:
        killer.join()


def test_a_watch_turns_readable_when_a_job_is_reported_or_killed(tmp_path: Path) -> None:
    with Client(init_session(tmp_path / "s")) as client:
        store = client.store
        first, second = client.submit({"command": ["true"], "array": {"count": 2}})
        watch = store.watch_ends()
        assert watch is not None
        assert not readable(watch.fileno(), 0.05)
        agent_id = store.register_agent(make_agent())
        [claim] = store.claim(
            ClaimRequest(agent_id, Capacity(1, 1 << 30), 1, 60.0, str(tmp_path / "w"))
        )
        assert not readable(watch.fileno(), 0.05)  # a claim ends nothing
        store.finish(agent_id, [Outcome(claim.attempt_id, AttemptState.SUCCEEDED, 0)])
        assert readable(watch.fileno(), 5.0)
        assert watch.rang() and not readable(watch.fileno(), 0.05)
        client.kill([second if claim.job_id == first else first])
        assert readable(watch.fileno(), 5.0)
        watch.close()


def test_wait_returns_when_the_job_ends_without_waiting_for_its_next_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "WAIT_POLL_S", 60.0)  # polling alone would take a minute
    with Client(init_session(tmp_path / "s")) as client:
        [job_id] = client.submit({"command": ["true"]})

        started = time.monotonic()
        with killed_later(client, job_id, after_s=0.2):
            counts = client.wait([job_id], timeout_s=30)
    assert counts[JobState.CANCELLED] == 1
    assert time.monotonic() - started < 10


def test_a_wait_that_times_out_says_so_and_leaves_no_watch_behind(tmp_path: Path) -> None:
    with Client(init_session(tmp_path / "s")) as client:
        [job_id] = client.submit({"command": ["true"]})
        with pytest.raises(TimeoutError, match="unfinished"):
            client.wait([job_id], timeout_s=0.1)
    ends = tmp_path / "s"
    assert not [p for p in ends.rglob("*.ends/*")]


def test_without_wake_ups_a_waiter_looks_soon_then_ever_less_often(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Client(init_session(tmp_path / "s")) as client:
        monkeypatch.setattr(client.store, "watch_ends", lambda: None)  # as a remote session
        looks: list[float] = []
        counts = client.counts

        def counted(job_ids: list[int] | None = None) -> dict[JobState, int]:
            looks.append(time.monotonic())
            return counts(job_ids)

        monkeypatch.setattr(client, "counts", counted)
        [job_id] = client.submit({"command": ["true"]})

        started = time.monotonic()
        with killed_later(client, job_id, after_s=1.0):
            client.wait([job_id], timeout_s=30)
    gaps = [b - a for a, b in itertools.pairwise(looks)]
    assert gaps[0] < 0.05  # the first look again comes soon
    assert max(gaps) <= client_module.WAIT_POLL_S + 0.1  # and never later than the longest pause
    assert 5 <= len(looks) <= 25  # not every 5 ms for a second either
    assert time.monotonic() - started < 1.0 + client_module.WAIT_POLL_S + 0.5
