"""The `clobi` command as a user runs it: a real process against a session in tmp_path.

These need no agent: jobs stay queued, which is enough to list, show, kill and remove them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

USAGE, BAD_SPEC, NOT_FOUND, CONFLICT, SESSION, TIMEOUT = 2, 3, 4, 5, 6, 9


def clobi(*args: str | Path | int, cwd: Path, code: int = 0) -> subprocess.CompletedProcess[str]:
    """Run `python -m clobi ARGS` and check its exit code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOBI_")}
    proc = subprocess.run(
        [sys.executable, "-m", "clobi", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


def ls_json(session: Path, *args: str) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = json.loads(
        clobi("ls", "--session", session, "--json", *args, cwd=session.parent).stdout
    )
    return jobs


@pytest.fixture
def session(tmp_path: Path) -> Path:
    clobi("session", "init", tmp_path / "s", cwd=tmp_path)
    return tmp_path / "s"


def submit(session: Path, *args: str) -> list[int]:
    out = clobi("submit", "--session", session, *args, cwd=session.parent).stdout
    return [int(line) for line in out.split()]


def test_session_init_prints_the_path_and_what_to_do_next(tmp_path: Path) -> None:
    out = clobi("session", "init", "s", cwd=tmp_path).stdout
    assert str(tmp_path / "s") in out
    assert "clobi agent" in out
    assert (tmp_path / "s" / "clobi.toml").is_file()


def test_session_show_names_the_store_settings_counts_and_agents(session: Path) -> None:
    submit(session, "--", "true")
    data = json.loads(
        clobi("session", "show", "--session", session, "--json", cwd=session.parent).stdout
    )
    assert data["root"] == str(session)
    assert data["store"].startswith("sqlite:")
    assert data["sandbox"].startswith("file:")
    assert data["settings"]["lease_s"] > 0
    assert data["counts"]["queued"] == 1
    assert data["agents"] == []
    human = clobi("session", "show", "--session", session, cwd=session.parent).stdout
    assert "1 queued" in human


def test_commands_find_the_session_from_the_current_directory(session: Path) -> None:
    clobi("submit", "--", "true", cwd=session)
    assert "queued" in clobi("ls", cwd=session).stdout


def test_a_spec_file_with_three_mistakes_is_refused_and_creates_nothing(session: Path) -> None:
    spec = session.parent / "bad.toml"
    spec.write_text(
        'command = ["echo", "hi"]\npriority = "high"\ncolour = "blue"\n[resources]\ncpus = -2\n',
        encoding="utf-8",
    )
    err = clobi("submit", "--session", session, spec, cwd=session.parent, code=BAD_SPEC).stderr
    assert err.startswith("clobi: error: ")
    for path in ("priority", "colour", "resources.cpus"):
        assert f"  {path}: " in err
    assert ls_json(session) == []


def test_a_spec_file_is_submitted_with_inputs_relative_to_its_folder(session: Path) -> None:
    folder = session.parent / "job"
    folder.mkdir()
    (folder / "data.txt").write_text("x", encoding="utf-8")
    (folder / "job.toml").write_text(
        'command = ["cat", "data.txt"]\ninputs = ["data.txt"]\narray = { count = 2 }\n',
        encoding="utf-8",
    )
    ids = submit(session, str(folder / "job.toml"))
    assert len(ids) == 2


def test_submitting_twice_with_one_idempotency_key_returns_the_same_id(session: Path) -> None:
    first = submit(session, "--idempotency-key", "k", "--", "true")
    second = submit(session, "--idempotency-key", "k", "--", "true")
    assert first == second
    assert len(ls_json(session)) == 1


def test_submit_prints_one_id_per_line_to_a_pipe(session: Path) -> None:
    ids = submit(session, "-n", "20", "--", "echo", "{index}")
    assert ids == list(range(1, 21))


def test_submit_json_gives_the_ids(session: Path) -> None:
    out = clobi("submit", "--session", session, "--json", "--", "true", cwd=session.parent).stdout
    assert json.loads(out) == {"ids": [1]}


def test_a_bad_flag_spec_is_refused_with_the_key_path(session: Path) -> None:
    err = clobi(
        "submit",
        "--session",
        session,
        "--walltime",
        "soon",
        "--",
        "true",
        cwd=session.parent,
        code=BAD_SPEC,
    ).stderr
    assert "resources.walltime" in err
    assert ls_json(session) == []


def test_a_queued_job_is_listed_shown_and_killed_to_cancelled(session: Path) -> None:
    [job] = submit(session, "--name", "hello", "--tag", "t", "--", "echo", "hi")
    [row] = ls_json(session)
    assert row["id"] == job
    assert (row["name"], row["state"], row["tags"]) == ("hello", "queued", ["t"])
    assert set(row) >= {
        "array_index",
        "attempts",
        "exit_code",
        "reason",
        "created_at",
        "updated_at",
        "lost_count",
        "retries_left",
        "priority",
    }
    assert "hello" in clobi("ls", "--session", session, cwd=session.parent).stdout
    shown = json.loads(
        clobi("show", "--session", session, job, "--json", cwd=session.parent).stdout
    )
    assert shown["spec"]["command"] == ["echo", "hi"]
    assert shown["attempts"] == []
    assert "echo hi" in clobi("show", "--session", session, job, cwd=session.parent).stdout
    killed = clobi("kill", "--session", session, job, cwd=session.parent).stdout
    assert killed.split() == [str(job)]
    assert ls_json(session)[0]["state"] == "cancelled"


def test_ls_filters_by_state_and_tag(session: Path) -> None:
    [a] = submit(session, "--tag", "x", "--", "true")
    [b] = submit(session, "--", "true")
    clobi("kill", "--session", session, b, cwd=session.parent)
    assert [j["id"] for j in ls_json(session, "--state", "queued")] == [a]
    assert [j["id"] for j in ls_json(session, "--state", "cancelled")] == [b]
    assert [j["id"] for j in ls_json(session, "--tag", "x")] == [a]
    assert [j["id"] for j in ls_json(session, "--after", str(a))] == [b]
    assert [j["id"] for j in ls_json(session, "--limit", "1")] == [a]


def test_kill_by_state_kills_every_queued_job(session: Path) -> None:
    ids = submit(session, "-n", "3", "--", "true")
    out = clobi("kill", "--session", session, "--state", "queued", cwd=session.parent).stdout
    assert [int(i) for i in out.split()] == ids


def test_killing_a_finished_job_is_a_conflict(session: Path) -> None:
    [job] = submit(session, "--", "true")
    clobi("kill", "--session", session, job, cwd=session.parent)
    err = clobi("kill", "--session", session, job, cwd=session.parent, code=CONFLICT).stderr
    assert f"job {job}: is cancelled" in err


def test_rm_deletes_a_job(session: Path) -> None:
    [keep, gone] = submit(session, "-n", "2", "--", "true")
    assert clobi("rm", "--session", session, gone, cwd=session.parent).stdout.split() == [str(gone)]
    assert [j["id"] for j in ls_json(session)] == [keep]


def test_retry_requeues_a_cancelled_job_and_refuses_a_queued_one(session: Path) -> None:
    [job] = submit(session, "--", "true")
    clobi("retry", "--session", session, job, cwd=session.parent, code=CONFLICT)
    clobi("kill", "--session", session, job, cwd=session.parent)
    clobi("retry", "--session", session, job, cwd=session.parent)
    assert ls_json(session)[0]["state"] == "queued"


@pytest.mark.parametrize(
    "command",
    [
        ["show"],
        ["kill"],
        ["rm"],
        ["retry"],
        ["wait"],
        ["logs"],
        ["events"],
        ["output", "--to", "out"],
    ],
)
def test_an_unknown_job_is_not_found_with_its_id_in_the_message(
    session: Path, command: list[str]
) -> None:
    err = clobi(*command, "--session", session, "4242", cwd=session.parent, code=NOT_FOUND).stderr
    assert err.startswith("clobi: error: ")
    assert "4242" in err


def test_a_non_integer_job_id_is_a_usage_error_naming_it(session: Path) -> None:
    err = clobi("show", "--session", session, "seven", cwd=session.parent, code=USAGE).stderr
    assert "'seven'" in err


def test_wait_gives_up_with_the_timeout_code(session: Path) -> None:
    [job] = submit(session, "--", "true")
    err = clobi(
        "wait", "--session", session, job, "--timeout", "0.5", cwd=session.parent, code=TIMEOUT
    ).stderr
    assert "1 queued" in err


def test_wait_on_cancelled_jobs_reports_them_as_not_succeeded(session: Path) -> None:
    [job] = submit(session, "--", "true")
    clobi("kill", "--session", session, job, cwd=session.parent)
    out = clobi("wait", "--session", session, cwd=session.parent, code=1).stdout
    assert "1 jobs: 0 succeeded, 1 cancelled" in out


def test_events_list_a_job_s_history(session: Path) -> None:
    [job] = submit(session, "--", "true")
    clobi("kill", "--session", session, job, cwd=session.parent)
    events = json.loads(
        clobi("events", "--session", session, job, "--json", cwd=session.parent).stdout
    )
    assert [e["kind"] for e in events] == ["submitted", "cancelled"]
    last = json.loads(
        clobi("events", "--session", session, "--json", "--limit", "1", cwd=session.parent).stdout
    )
    assert [e["kind"] for e in last] == ["cancelled"]


def test_agents_lists_none_in_a_new_session(session: Path) -> None:
    out = clobi("agents", "--session", session, "--json", "--all", cwd=session.parent).stdout
    assert json.loads(out) == []


def test_a_missing_session_is_a_session_error(tmp_path: Path) -> None:
    err = clobi("ls", cwd=tmp_path, code=SESSION).stderr
    assert "clobi session init" in err
