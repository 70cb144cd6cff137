"""Agents as users run them: real processes, real jobs, crashes and kills."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from clobi.model.states import AttemptState, JobState
from clobi.session import Session
from tests.acceptance.harness import (
    Agents,
    client_of,
    fast_session,
    processes_of_job,
    wait_for,
)

pytestmark = pytest.mark.slow


def _states(client, ids):  # type: ignore[no-untyped-def]
    return {j.id: j.state for j in client.list(ids=ids, limit=None)}


def test_jobs_of_a_killed_agent_are_requeued_and_succeed_with_one_result(
    session: Session, agents: Agents
) -> None:
    with client_of(session) as client:
        ids = client.submit(
            {"command": ["sh", "-c", "sleep 2; echo done {index}"], "array": {"count": 3}}
        )
        first = agents.start(cpus=3)
        wait_for(lambda: client.counts(ids)[JobState.RUNNING] == 3, what="3 running")
        os.kill(first.pid, signal.SIGKILL)
        agents.start(cpus=3)
        client.wait(ids, timeout_s=60)
        for job_id in ids:
            view = client.get(job_id)
            assert view.job.state is JobState.SUCCEEDED, agents.log_text()
            states = [a.state for a in view.attempts]
            assert states == [AttemptState.LOST, AttemptState.SUCCEEDED]
            assert sum(a.has_output for a in view.attempts) == 1
            assert view.job.lost_count == 1
            stdout = client.read_output_file(job_id, "stdout").decode()
            assert stdout.strip() == f"done {view.job.array_index}"


def test_concurrent_submitters_and_two_agents_start_jobs_in_submission_order(
    session: Session, agents: Agents, tmp_path: Path
) -> None:
    import subprocess
    import sys

    script = (
        "import sys\nfrom clobi.client import Client\n"
        "c = Client(sys.argv[1])\n"
        "for i in range(500):\n"
        "    c.submit({'command': ['true'], 'tags': ['s' + sys.argv[2]]})\n"
    )
    agents.start(cpus=2)
    agents.start(cpus=2)
    submitters = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(session.root), str(n)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    errors = [p.communicate(timeout=300)[1] for p in submitters]
    assert [p.returncode for p in submitters] == [0, 0, 0, 0], errors
    assert errors == ["", "", "", ""]
    with client_of(session) as client:
        counts = client.wait(timeout_s=300)
        assert counts[JobState.SUCCEEDED] == 2000
        jobs = client.list(limit=None)
        starts = sorted((a.id, j.id) for j in jobs for a in client.store.attempts(j.id))
        assert [job for _, job in starts] == sorted(j.id for j in jobs)
        assert "locked" not in agents.log_text()


def test_a_higher_priority_submitted_later_starts_before_queued_lower_ones(
    session: Session, agents: Agents
) -> None:
    with client_of(session) as client:
        low = client.submit({"command": ["true"], "array": {"count": 10}})
        high = client.submit({"command": ["true"], "priority": 10})
        agents.start(cpus=1)
        client.wait(timeout_s=60)
        order = sorted((client.get(i).attempts[0].id, i) for i in low + high)
        assert [job for _, job in order] == high + low


def test_a_job_past_its_walltime_is_timed_out_with_no_process_left(
    session: Session, agents: Agents
) -> None:
    with client_of(session) as client:
        (job_id,) = client.submit(
            {
                "command": "sh -c 'sleep 1000 &' ; (setsid sleep 1000 &) ; sleep 1000",
                "shell": True,
                "resources": {"walltime": "2s"},
            }
        )
        agents.start(cpus=1)
        wait_for(lambda: len(processes_of_job(job_id)) >= 3, what="the job's processes")
        client.wait([job_id], timeout_s=30)
        job = client.get(job_id).job
        assert job.state is JobState.TIMED_OUT
        assert "walltime" in job.reason
        wait_for(lambda: processes_of_job(job_id) == [], timeout_s=5, what="no process left")


def test_killing_a_running_job_cancels_it_within_two_heartbeats(
    session: Session, agents: Agents
) -> None:
    with client_of(session) as client:
        (job_id,) = client.submit({"command": ["sleep", "1000"]})
        agents.start(cpus=1)
        wait_for(lambda: client.get(job_id).job.state is JobState.RUNNING, what="running")
        wait_for(lambda: processes_of_job(job_id) != [], what="the job's process")
        killed_at = time.monotonic()
        assert client.kill([job_id]) == [job_id]
        wait_for(lambda: client.get(job_id).job.state is JobState.CANCELLED, timeout_s=10)
        elapsed = time.monotonic() - killed_at
        assert elapsed <= 2 * session.settings.heartbeat_s + 0.5
        wait_for(lambda: processes_of_job(job_id) == [], timeout_s=3, what="no process left")


def test_killing_a_queued_job_cancels_it_at_once(session: Session) -> None:
    with client_of(session) as client:
        (job_id,) = client.submit({"command": ["true"]})
        client.kill([job_id])
        assert client.get(job_id).job.state is JobState.CANCELLED


def test_random_agent_crashes_lose_no_acknowledged_job(tmp_path: Path) -> None:
    session = fast_session(tmp_path / "s", lost_cap=1000, lease_s=1.0, heartbeat_s=0.2)
    pool = Agents(session, tmp_path)
    rng = random.Random(7)
    try:
        with client_of(session) as client:
            ids = client.submit(
                {"command": ["sh", "-c", "sleep 0.1; echo {index}"], "array": {"count": 150}}
            )
            pool.start(cpus=2)
            pool.start(cpus=2)
            for _ in range(8):
                time.sleep(rng.uniform(0.2, 0.8))
                victim = rng.choice([p for p in pool.procs if p.poll() is None])
                os.kill(victim.pid, signal.SIGKILL)
                victim.wait()
                pool.start(cpus=2)
            counts = client.wait(ids, timeout_s=120)
            assert counts[JobState.SUCCEEDED] == 150, pool.log_text()
            for job_id in ids:
                attempts = client.get(job_id).attempts
                assert [a.state for a in attempts].count(AttemptState.SUCCEEDED) == 1
    finally:
        pool.stop_all()
