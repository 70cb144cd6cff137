"""`clobi run` end to end: a real CLI process that starts real local agent processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

JOBS_FAILED, BAD_SPEC, INTERRUPTED = 1, 3, 130


def environment(tmp_path: Path) -> dict[str, str]:
    """No ambient session; temporary sessions go to tmp_path/tmp so their removal is seen."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOBI_")}
    env["TMPDIR"] = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return env


def clobi(*args: str | Path | int, cwd: Path, code: int = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "clobi", *map(str, args)],
        cwd=cwd,
        env=environment(cwd),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


def ls_json(session: Path, cwd: Path) -> list[dict[str, Any]]:
    out = clobi("ls", "--session", session, "--json", "--limit", "1000", cwd=cwd).stdout
    jobs: list[dict[str, Any]] = json.loads(out)
    return jobs


@pytest.mark.slow
def test_a_run_of_200_reports_its_12_failures_and_keeps_the_session(tmp_path: Path) -> None:
    session = tmp_path / "S"
    run = clobi(
        "run",
        "--session",
        session,
        "-n",
        "200",
        "--",
        "sh",
        "-c",
        "echo {index}; test $(( {index} % 17 )) -ne 0",
        cwd=tmp_path,
        code=JOBS_FAILED,
    )
    assert "200 jobs: 188 succeeded, 12 failed" in run.stdout
    jobs = ls_json(session, tmp_path)
    assert len(jobs) == 200
    by_index = {j["array_index"]: j for j in jobs}
    failed = sorted(j["array_index"] for j in jobs if j["state"] == "failed")
    assert failed == list(range(0, 200, 17))
    assert sum(j["state"] == "succeeded" for j in jobs) == 188
    for index in failed:
        job = by_index[index]
        assert job["exit_code"] == 1
        assert f"job {job['id']} (index {index}): failed, exit code 1" in run.stdout
    out_dir = tmp_path / "D"
    clobi("output", "--session", session, by_index[5]["id"], "--to", out_dir, cwd=tmp_path)
    assert "5" in (out_dir / "stdout").read_text(encoding="utf-8")
    # its agents were instances of the local pool, started by the local provider, now ended
    instances = json.loads(
        clobi("instances", "--all", "--json", "--session", session, cwd=tmp_path).stdout
    )
    assert instances and {i["pool"] for i in instances} == {"local"}
    assert {(i["provider"], i["state"]) for i in instances} == {("local", "terminated")}
    assert {i["reason"] for i in instances} == {"the run is over"}
    assert clobi("instances", "--session", session, cwd=tmp_path).stdout == ""


def test_a_temporary_run_extracts_outputs_with_to_and_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    run = clobi("run", "-n", "3", "--to", "out", "--", "sh", "-c", "echo hi {index}", cwd=tmp_path)
    assert "3 jobs: 3 succeeded, 0 failed" in run.stdout
    stdouts = sorted((tmp_path / "out").glob("*/stdout"))
    assert [p.read_text(encoding="utf-8") for p in stdouts] == ["hi 0\n", "hi 1\n", "hi 2\n"]
    assert not list((tmp_path / "tmp").glob("clobi-run-*"))


def test_a_temporary_run_shows_the_stderr_of_its_failures(tmp_path: Path) -> None:
    run = clobi(
        "run",
        "--quiet",
        "--",
        "sh",
        "-c",
        "echo it broke >&2; exit 3",
        cwd=tmp_path,
        code=JOBS_FAILED,
    )
    assert "1 jobs: 0 succeeded, 1 failed" in run.stdout
    assert "job 1: failed, exit code 3" in run.stdout
    assert "it broke" in run.stdout
    assert run.stderr == ""


def test_a_run_lists_at_most_50_unsuccessful_jobs(tmp_path: Path) -> None:
    run = clobi("run", "--quiet", "-n", "60", "--", "false", cwd=tmp_path, code=JOBS_FAILED)
    assert sum(line.startswith("  job ") for line in run.stdout.splitlines()) == 50
    assert "… and 10 more" in run.stdout


def test_a_run_with_a_bad_spec_creates_no_session(tmp_path: Path) -> None:
    err = clobi(
        "run",
        "--session",
        tmp_path / "S",
        "--walltime",
        "soon",
        "--",
        "true",
        cwd=tmp_path,
        code=BAD_SPEC,
    ).stderr
    assert "resources.walltime" in err
    assert not (tmp_path / "S").exists()


def test_a_run_past_its_walltime_is_reported_as_timed_out(tmp_path: Path) -> None:
    run = clobi(
        "run", "--quiet", "--walltime", "1s", "--", "sleep", "30", cwd=tmp_path, code=JOBS_FAILED
    )
    assert "timed_out" in run.stdout


def test_a_run_prints_progress_lines_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    run = clobi("run", "-n", "2", "--", "true", cwd=tmp_path)
    assert "/2 done (" in run.stderr


@pytest.mark.slow
def test_ctrl_c_kills_the_run_s_jobs_stops_its_agents_and_exits_130(tmp_path: Path) -> None:
    session = tmp_path / "S"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clobi",
            "run",
            "--session",
            str(session),
            "-n",
            "3",
            "--",
            "sleep",
            "60",
        ],
        cwd=tmp_path,
        env=environment(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_a_running_job(session, tmp_path)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == INTERRUPTED, err
    assert "Traceback" not in err
    assert {j["state"] for j in ls_json(session, tmp_path)} == {"cancelled"}
    agents = clobi("agents", "--session", session, "--json", cwd=tmp_path).stdout
    assert json.loads(agents) == []


def _wait_for_a_running_job(session: Path, cwd: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (session / "clobi.toml").exists() and any(
            j["state"] == "running" for j in ls_json(session, cwd)
        ):
            return
        time.sleep(0.2)
    raise AssertionError("no job started running within 60 s")


def test_a_foreground_agent_runs_submitted_jobs_and_drains_on_sigterm(tmp_path: Path) -> None:
    session = tmp_path / "S"
    clobi("session", "init", session, cwd=tmp_path)
    ids = clobi(
        "submit", "--session", session, "-n", "3", "--", "sh", "-c", "echo {index}", cwd=tmp_path
    ).stdout.split()
    agent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clobi",
            "agent",
            "--session",
            str(session),
            "--cpus",
            "2",
            "--memory",
            "1G",
            "--labels",
            "a,b",
            "--name",
            "here",
        ],
        cwd=tmp_path,
        env=environment(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out = clobi("wait", "--session", session, *ids, "--timeout", "60", cwd=tmp_path).stdout
        assert "3 jobs: 3 succeeded" in out
        [row] = json.loads(clobi("agents", "--session", session, "--json", cwd=tmp_path).stdout)
        assert (row["name"], row["cpus"], sorted(row["labels"])) == ("here", 2, ["a", "b"])
        agent.terminate()
        _, err = agent.communicate(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
    assert agent.returncode == 0, err
    logs = clobi("logs", "--session", session, ids[1], cwd=tmp_path).stdout
    assert logs == "1\n"
