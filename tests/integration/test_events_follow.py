"""`clobi events --follow`: every event once, also when ids commit out of order; Ctrl-C ends it
with exit code 130."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from clobi.cli.agent_cmd import GAP_WAIT_S, EventFollower
from clobi.model.records import Event
from clobi.session import init_session
from tests.conftest import make_submission


def ev(i: int, job_id: int | None = None) -> Event:
    return Event(i, float(i), job_id, None, None, "submitted", "", "queued", "")


class Log:
    """Committed events, as a reader after `after_id` sees them."""

    def __init__(self) -> None:
        self.committed: list[Event] = []
        self.reads: list[int] = []

    def read(self, after: int) -> list[Event]:
        self.reads.append(after)
        return sorted((e for e in self.committed if e.id > after), key=lambda e: e.id)


def test_an_event_that_commits_after_a_newer_one_is_printed_once_when_it_shows() -> None:
    log, now = Log(), [0.0]
    follower = EventFollower(log.read, 10, clock=lambda: now[0])
    log.committed += [ev(11), ev(13)]  # 12 was handed out but not committed yet
    assert [e.id for e in follower.poll()] == [11, 13]
    assert follower.poll() == [] and log.reads[-1] == 11  # still looking from the gap
    log.committed.append(ev(12))
    assert [e.id for e in follower.poll()] == [12]
    assert follower.poll() == [] and log.reads[-1] == 13


def test_a_gap_that_stays_empty_is_given_up_after_a_while() -> None:
    log, now = Log(), [0.0]
    follower = EventFollower(log.read, 0, clock=lambda: now[0])
    log.committed += [ev(1), ev(3)]  # 2 was rolled back
    follower.poll()
    now[0] = GAP_WAIT_S + 1
    assert follower.poll() == [] and log.reads[-1] == 3


def test_following_one_job_reads_past_the_newest_only() -> None:
    log = Log()
    follower = EventFollower(log.read, 0)
    follower.watch_gaps = False  # one job's events commit in id order
    log.committed += [ev(5, 1), ev(9, 1)]
    follower.poll()
    assert follower.poll() == [] and log.reads[-1] == 9


def test_clobi_events_follow_prints_new_events_as_json_lines_until_ctrl_c(
    tmp_path: Path,
) -> None:
    session = init_session(tmp_path / "s")
    store = session.open_store()
    store.submit(make_submission())
    cmd = [sys.executable, "-m", "clobi", "events", "--follow", "--json", "--limit", "1"]
    proc = subprocess.Popen(
        [*cmd, "--session", str(session.root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        (job,) = store.submit(make_submission())
        second = json.loads(proc.stdout.readline())
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        store.close()
    assert (first["kind"], second["kind"], second["job_id"]) == ("submitted", "submitted", job)
    assert second["id"] > first["id"] and out == ""
    assert proc.returncode == 130 and "interrupted" in err
