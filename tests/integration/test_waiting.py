"""Waiting for jobs on an embedded session: woken by the store when jobs end, not by polling."""

from __future__ import annotations

import select
import threading
import time
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

        def kill() -> None:
            with Client(client.session) as other:
                other.kill([job_id])

        killer = threading.Timer(0.2, kill)
        killer.start()
        started = time.monotonic()
        counts = client.wait([job_id], timeout_s=30)
        killer.join()
    assert counts[JobState.CANCELLED] == 1
    assert time.monotonic() - started < 10


def test_a_wait_that_times_out_says_so_and_leaves_no_watch_behind(tmp_path: Path) -> None:
    with Client(init_session(tmp_path / "s")) as client:
        [job_id] = client.submit({"command": ["true"]})
        with pytest.raises(TimeoutError, match="unfinished"):
            client.wait([job_id], timeout_s=0.1)
    ends = tmp_path / "s"
    assert not [p for p in ends.rglob("*.ends/*")]
