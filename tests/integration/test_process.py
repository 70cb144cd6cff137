"""Job processes as the agent runs them: real processes, real signals, a real /proc."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from clobi.agent import process, teardown
from clobi.agent.process import JobProcess, SpawnError
from clobi.agent.teardown import Terminator

Spawner = Callable[..., JobProcess]

# Both the group and any escaped processes ignore SIGTERM: only the KILL step ends them.
DOUBLE_FORK = "(sleep 1000 &) ; sleep 1000"
SETSID_ESCAPE = "setsid sleep 1000 & sleep 1000"
STUBBORN = "trap '' TERM; "


def new_attempt_id() -> int:
    """An attempt id no other test run on this machine uses: escapes are found by it."""
    return random.randrange(10**12, 10**13)


def marked_pids(attempt_id: int) -> list[int]:
    """Live processes carrying the attempt's marker, found without the module under test."""
    entry = f"CLOBI_ATTEMPT_ID={attempt_id}".encode()
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with suppress(OSError):
                if entry in Path(f"/proc/{name}/environ").read_bytes().split(b"\0"):
                    found.append(int(name))
    return found


def kill_marked(attempt_id: int) -> None:
    """Last-resort cleanup for tests: SIGKILL every process carrying the marker."""
    for pid in marked_pids(attempt_id):
        with suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """Poll `condition` until it holds or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def not_our_child_any_more(pid: int) -> bool:
    """Reap `pid` if it has ended; True once it is no child of ours."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return True


def wait_exit(proc: JobProcess, timeout_s: float = 10.0) -> tuple[int, float]:
    """Wait for the job's main process and return its (exit code, CPU seconds) from reap()."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        process.wait_any([proc], deadline - time.monotonic())
        for pid, code, cpu_s in process.reap():
            if pid == proc.pid:
                return code, cpu_s
    raise AssertionError(f"job {proc.pid} did not end within {timeout_s} s")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def spawn_job(tmp_path: Path, workdir: Path) -> Iterator[Spawner]:
    """Spawn jobs into `workdir`, output in tmp_path/stdout|stderr; kill all of them after."""
    started: list[JobProcess] = []

    def spawn_job(argv: list[str], **kwargs: Any) -> JobProcess:
        kwargs.setdefault("env", {})
        kwargs.setdefault("cwd", workdir)
        kwargs.setdefault("stdout_path", tmp_path / "stdout")
        kwargs.setdefault("stderr_path", tmp_path / "stderr")
        kwargs.setdefault("attempt_id", new_attempt_id())
        proc = process.spawn(argv, **kwargs)
        started.append(proc)
        return proc

    yield spawn_job
    for proc in started:  # without the module under test: it may be what failed
        with suppress(OSError):
            os.killpg(proc.pgid, signal.SIGKILL)
        kill_marked(proc.attempt_id)
        eventually(partial(not_our_child_any_more, proc.pid))
        proc.close()


def run_to_end(spawn_job: Spawner, argv: list[str], **kwargs: Any) -> int:
    """Spawn, wait and return the exit code."""
    return wait_exit(spawn_job(argv, **kwargs))[0]


# --- what the job sees ------------------------------------------------------------------------


def test_the_job_sees_only_its_own_environment_plus_marker_path_and_home(
    spawn_job: Spawner, tmp_path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOBI_TEST_SECRET", "hunter2")
    proc = spawn_job(["env"], env={"GREETING": "hello"})
    assert wait_exit(proc)[0] == 0
    assert sorted((tmp_path / "stdout").read_text().splitlines()) == sorted(
        [
            "GREETING=hello",
            f"CLOBI_ATTEMPT_ID={proc.attempt_id}",
            "PATH=/usr/local/bin:/usr/bin:/bin",
            f"HOME={workdir}",
        ]
    )


def test_signals_the_agent_ignores_are_at_their_defaults_in_the_job(
    spawn_job: Spawner, monkeypatch: pytest.MonkeyPatch
) -> None:
    handled = signal.getsignal(signal.SIGUSR1)
    monkeypatch.setattr(process, "_signals_to_default", process._signals_to_default.__wrapped__)
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    signal.signal(signal.SIGUSR1, lambda *_: None)  # a handler: exec resets it by itself
    try:
        proc = spawn_job(["sleep", "30"])
    finally:
        signal.signal(signal.SIGHUP, previous)
        signal.signal(signal.SIGUSR1, handled)
    status = Path(f"/proc/{proc.pid}/status").read_text()
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    # Bits of the signals a program can use (glibc keeps 32 and 33 for itself and ignores them
    # in a spawned child whatever one asks; its programs take them back at start-up).
    usable = sum(1 << (s - 1) for s in signal.valid_signals())
    assert int(fields["SigIgn"], 16) & usable == 0, fields["SigIgn"]  # not SIGPIPE nor SIGHUP
    assert int(fields["SigCgt"], 16) & usable == 0, fields["SigCgt"]
    assert int(fields["SigBlk"], 16) & usable == 0, fields["SigBlk"]


def test_a_given_path_and_home_are_kept_and_the_marker_cannot_be_forged(
    spawn_job: Spawner, tmp_path: Path
) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nowhere", "CLOBI_ATTEMPT_ID": "1"}
    proc = spawn_job(["env"], env=env)
    assert wait_exit(proc)[0] == 0
    assert sorted((tmp_path / "stdout").read_text().splitlines()) == sorted(
        ["PATH=/usr/bin:/bin", "HOME=/nowhere", f"CLOBI_ATTEMPT_ID={proc.attempt_id}"]
    )


def test_the_job_runs_in_its_work_directory_and_the_agent_s_stays_put(
    spawn_job: Spawner, tmp_path: Path, workdir: Path
) -> None:
    script = workdir / "where.sh"
    script.write_text("#!/bin/sh\npwd -P\n")
    script.chmod(0o755)
    before = os.getcwd()
    assert run_to_end(spawn_job, ["./where.sh"]) == 0
    assert (tmp_path / "stdout").read_text().strip() == str(workdir.resolve())
    assert os.getcwd() == before


def test_stdout_and_stderr_land_in_their_files(spawn_job: Spawner, tmp_path: Path) -> None:
    assert run_to_end(spawn_job, ["sh", "-c", "echo out; echo err >&2"]) == 0
    assert (tmp_path / "stdout").read_text() == "out\n"
    assert (tmp_path / "stderr").read_text() == "err\n"


def test_stdout_and_stderr_may_share_one_file(spawn_job: Spawner, tmp_path: Path) -> None:
    both = tmp_path / "output"
    argv = ["sh", "-c", "echo one; echo two >&2; echo three"]
    assert run_to_end(spawn_job, argv, stdout_path=both, stderr_path=both) == 0
    assert both.read_text() == "one\ntwo\nthree\n"


def test_the_job_reads_end_of_file_from_stdin(spawn_job: Spawner, tmp_path: Path) -> None:
    assert run_to_end(spawn_job, ["sh", "-c", "cat; echo done"]) == 0
    assert (tmp_path / "stdout").read_text() == "done\n"


def test_the_job_inherits_no_descriptor_beyond_0_1_2(spawn_job: Spawner, tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    try:
        os.set_inheritable(read_end, True)
        assert run_to_end(spawn_job, ["sh", "-c", "ls /proc/$$/fd"]) == 0
    finally:
        os.close(read_end)
        os.close(write_end)
    assert (tmp_path / "stdout").read_text().split() == ["0", "1", "2"]


# --- how it ends --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "expected"),
    [("exit 0", 0), ("exit 3", 3), ("kill -KILL $$", -signal.SIGKILL), ("kill -TERM $$", -15)],
)
def test_exit_codes_and_signal_deaths_are_reported_like_popen(
    spawn_job: Spawner, script: str, expected: int
) -> None:
    code, cpu_s = wait_exit(spawn_job(["sh", "-c", script]))
    assert code == expected
    assert 0.0 <= cpu_s < 5.0


def test_spawning_a_missing_command_raises_spawn_error_naming_it(spawn_job: Spawner) -> None:
    before = os.getcwd()
    with pytest.raises(SpawnError, match="no-such-command-xyz"):
        spawn_job(["no-such-command-xyz", "--help"])
    with pytest.raises(SpawnError, match="/nonexistent/bin/tool"):
        spawn_job(["/nonexistent/bin/tool"])
    assert os.getcwd() == before


def test_spawning_a_file_that_is_not_executable_raises_spawn_error(
    spawn_job: Spawner, workdir: Path
) -> None:
    (workdir / "data.txt").write_text("not a program\n")
    with pytest.raises(SpawnError, match=r"\./data\.txt"):
        spawn_job(["./data.txt"])


def test_a_script_whose_interpreter_is_missing_raises_spawn_error(
    spawn_job: Spawner, workdir: Path
) -> None:
    script = workdir / "run"
    script.write_text("#!/nonexistent/interpreter\n")
    script.chmod(0o755)
    with pytest.raises(SpawnError, match=r"\./run"):
        spawn_job(["./run"])


def test_a_missing_output_directory_is_the_agent_s_error_not_the_command_s(
    spawn_job: Spawner, tmp_path: Path
) -> None:
    with pytest.raises(OSError) as caught:
        spawn_job(["true"], stdout_path=tmp_path / "gone" / "stdout")
    assert not isinstance(caught.value, SpawnError)


def test_group_alive_follows_the_job_s_process_group(spawn_job: Spawner) -> None:
    proc = spawn_job(["sleep", "1000"])
    assert teardown.group_alive(proc)
    teardown.signal_job(proc, signal.SIGKILL, scan=False)
    assert wait_exit(proc)[0] == -signal.SIGKILL
    assert not teardown.group_alive(proc)


# --- nothing is left behind -------------------------------------------------------------------


@pytest.mark.parametrize(
    "script",
    [DOUBLE_FORK, SETSID_ESCAPE, STUBBORN + DOUBLE_FORK, STUBBORN + SETSID_ESCAPE],
    ids=["double-fork", "setsid", "double-fork-ignoring-term", "setsid-ignoring-term"],
)
def test_a_terminated_job_is_gone_entirely_after_term_grace_and_kill(
    spawn_job: Spawner, script: str
) -> None:
    proc = spawn_job(["sh", "-c", script])
    assert eventually(lambda: len(marked_pids(proc.attempt_id)) >= 3)  # sh and two sleeps
    terminator = Terminator()
    terminator.start(proc, grace_s=0.3)
    kill_at = terminator.next_due()
    assert kill_at is not None
    process.wait_any([], kill_at - time.monotonic())
    for doomed in terminator.due():
        teardown.signal_job(doomed, signal.SIGKILL)
    code, _ = wait_exit(proc)
    teardown.cleanup_leftovers(proc)
    assert code in (-signal.SIGTERM, -signal.SIGKILL)
    assert eventually(lambda: not marked_pids(proc.attempt_id))


def test_a_job_that_honours_term_ends_before_its_grace_period(spawn_job: Spawner) -> None:
    proc = spawn_job(["sleep", "1000"])
    terminator = Terminator()
    terminator.start(proc, grace_s=30.0)
    assert wait_exit(proc)[0] == -signal.SIGTERM
    terminator.forget(proc)
    assert terminator.due(time.monotonic() + 60) == []
    assert terminator.next_due() is None


def test_the_terminator_hands_out_each_kill_once_when_its_grace_period_is_over(
    spawn_job: Spawner,
) -> None:
    proc = spawn_job(["sh", "-c", STUBBORN + "sleep 1000"])
    terminator = Terminator()
    terminator.start(proc, grace_s=5.0, now=100.0)
    terminator.start(proc, grace_s=1.0, now=101.0)  # a second request keeps the first deadline
    assert terminator.next_due() == 105.0
    assert terminator.due(104.9) == []
    assert terminator.due(105.0) == [proc]
    assert terminator.due(200.0) == []
    assert teardown.group_alive(proc)  # TERM was ignored: only the KILL will end it


@pytest.mark.parametrize("age", ["young", "old"])
def test_cleanup_kills_the_daemons_a_finished_job_left_behind(spawn_job: Spawner, age: str) -> None:
    proc = spawn_job(["sh", "-c", "setsid sleep 1000 & (sleep 1000 &); sleep 0.2; exit 0"])
    assert wait_exit(proc)[0] == 0
    assert len(marked_pids(proc.attempt_id)) == 2
    if age == "old":  # a job running for minutes gets the full /proc search
        proc.started_monotonic -= 600.0
    teardown.cleanup_leftovers(proc)
    assert eventually(lambda: not marked_pids(proc.attempt_id))
    assert proc.pidfd is None


SUBREAPER_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from clobi.agent import process, teardown

    work, attempt_id = Path(sys.argv[1]), int(sys.argv[2])
    facts = {"no_children_reap": process.reap(), "became": process.become_subreaper()}
    facts["is_subreaper"] = process.is_subreaper()

    def run(argv, attempt):
        proc = process.spawn(argv, env={}, cwd=work, stdout_path=work / "out",
                             stderr_path=work / "err", attempt_id=attempt)
        while True:
            process.wait_any([proc], 10.0)
            if any(pid == proc.pid for pid, _, _ in process.reap()):
                return proc

    quiet = run(["true"], attempt_id + 1)
    teardown.cleanup_leftovers(quiet)
    daemon_job = run(["sh", "-c", "setsid sleep 1000 & sleep 0.2"], attempt_id)
    def parent_of(pid):
        try:
            return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return None  # ended meanwhile

    orphans = [p for p in os.listdir("/proc") if p.isdigit() and parent_of(p) == os.getpid()]
    facts["orphans_reparented_to_us"] = len(orphans)
    teardown.cleanup_leftovers(daemon_job)
    deadline = time.monotonic() + 5
    reaped = []
    while not reaped and time.monotonic() < deadline:
        time.sleep(0.02)
        reaped = process.reap()
    facts["orphan_ends"] = [code for _, code, _ in reaped]
    print(json.dumps(facts))
    """
)


def test_as_a_subreaper_the_agent_adopts_escaped_daemons_and_cleanup_kills_them(
    tmp_path: Path,
) -> None:
    attempt_id = new_attempt_id()
    argv = [sys.executable, "-c", SUBREAPER_SCRIPT, str(tmp_path), str(attempt_id)]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    finally:
        kill_marked(attempt_id)
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts == {
        "no_children_reap": [],
        "became": True,
        "is_subreaper": True,
        "orphans_reparented_to_us": 1,
        "orphan_ends": [-signal.SIGKILL],
    }
    assert not marked_pids(attempt_id)


# --- waiting ------------------------------------------------------------------------------------


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "polling"])
def test_wait_any_returns_promptly_when_a_child_exits(spawn_job: Spawner, pidfd: bool) -> None:
    proc = spawn_job(["sleep", "0.2"])
    watched = proc if pidfd else replace(proc, pidfd=None)
    started = time.monotonic()
    process.wait_any([spawn_job(["sleep", "1000"]), watched], 10.0)
    assert time.monotonic() - started < 2.0
    assert wait_exit(proc)[0] == 0


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "polling"])
def test_wait_any_does_not_spin_while_it_waits(spawn_job: Spawner, pidfd: bool) -> None:
    proc = spawn_job(["sleep", "1000"])
    watched = proc if pidfd else replace(proc, pidfd=None)
    cpu_before, started = time.process_time(), time.monotonic()
    process.wait_any([watched], 0.5)
    assert time.monotonic() - started >= 0.45
    assert time.process_time() - cpu_before < 0.05


def test_wait_any_returns_when_the_wake_fd_becomes_readable(spawn_job: Spawner) -> None:
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"!")
        started = time.monotonic()
        ready = process.wait_any([spawn_job(["sleep", "1000"])], 10.0, wake_fds=[read_end])
        assert time.monotonic() - started < 1.0
        assert ready == {read_end}
    finally:
        os.close(read_end)
        os.close(write_end)


def test_wait_any_names_the_descriptors_that_woke_it(spawn_job: Spawner) -> None:
    quiet_r, quiet_w = os.pipe()
    try:
        done = spawn_job(["true"])
        ready = process.wait_any([spawn_job(["sleep", "1000"]), done], 10.0, wake_fds=[quiet_r])
        assert ready == {done.pidfd}
        assert process.wait_any([], 0.01, wake_fds=[quiet_r]) == set()  # a timeout: none
    finally:
        os.close(quiet_r)
        os.close(quiet_w)


def test_the_machine_s_capacity_is_what_this_process_may_use() -> None:
    cpus, memory_bytes = process.free_capacity_of_machine()
    assert cpus == len(os.sched_getaffinity(0))
    assert 64 * 2**20 < memory_bytes < 2**50
