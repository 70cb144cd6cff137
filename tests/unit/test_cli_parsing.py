"""The `clobi` command line: parsing, job ids, exit codes and how errors are printed."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from clobi import __version__, errors
from clobi.cli import main as cli_main
from clobi.cli.exitcodes import ExitCode, exit_code_for
from clobi.cli.main import main, parse, split_command
from clobi.cli.output import id_ranges, job_id
from clobi.cli.specflags import spec_from_args
from clobi.model.states import JobState


@pytest.fixture(autouse=True)
def no_ambient_session(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CLOBI_SESSION", raising=False)
    monkeypatch.delenv("CLOBI_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- parsing ------------------------------------------------------------------------------
def test_everything_after_the_first_double_dash_is_the_job_s_command() -> None:
    head, command = split_command(["run", "-n", "3", "--", "git", "log", "--", "-n", "1"])
    assert head == ["run", "-n", "3"]
    assert command == ["git", "log", "--", "-n", "1"]


def test_a_command_line_without_double_dash_has_no_job_command() -> None:
    assert split_command(["ls", "--json"]) == (["ls", "--json"], None)


def test_run_reads_its_spec_flags_and_command() -> None:
    args = parse(
        [
            "run",
            "-n",
            "200",
            "--cpus",
            "2",
            "--retries",
            "1",
            "--outputs",
            "a*",
            "b",
            "--agents",
            "3",
            "--",
            "sh",
            "-c",
            "echo {index}",
        ]
    )
    assert (args.count, args.cpus, args.retries, args.agents) == (200, 2.0, 1, 3)
    assert args.outputs == ["a*", "b"]
    assert args.command == ["sh", "-c", "echo {index}"]


def test_the_spec_flags_become_a_validated_spec() -> None:
    args = parse(
        [
            "submit",
            "--array",
            "x,y",
            "--tag",
            "t1",
            "--env",
            "A=1=2",
            "--priority",
            "5",
            "--walltime",
            "90s",
            "--",
            "echo",
            "{value}",
        ]
    )
    spec = spec_from_args(args, args.command)
    assert spec.array is not None and spec.array.values == ("x", "y")
    assert spec.env == {"A": "1=2"}
    assert (spec.tags, spec.priority, spec.resources.walltime_s) == (("t1",), 5, 90.0)


def test_an_env_flag_without_equals_is_a_usage_error() -> None:
    args = parse(["submit", "--env", "NOPE", "--", "true"])
    with pytest.raises(errors.UsageError, match="K=V"):
        spec_from_args(args, args.command)


def test_a_bad_array_flag_is_a_usage_error_naming_the_flag() -> None:
    args = parse(["submit", "--array", "1-5", "--", "true"])
    with pytest.raises(errors.UsageError, match="--array"):
        spec_from_args(args, args.command)


def test_session_may_be_given_before_or_after_the_command() -> None:
    assert parse(["--session", "a", "ls"]).session == "a"
    assert parse(["ls", "--session", "b"]).session == "b"
    assert parse(["ls"]).session is None


def test_count_and_array_cannot_both_be_given(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "run", "-n", "3", "--array", "a,b", "--", "true")
    assert code == ExitCode.USAGE
    assert "not allowed with" in err


def test_a_command_after_double_dash_is_refused_where_none_is_taken(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run_main(capsys, "ls", "--", "echo")
    assert code == ExitCode.USAGE
    assert "clobi: error: ls: takes no command" in err


def test_no_command_at_all_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys)
    assert code == ExitCode.USAGE
    assert "usage: clobi" in err


def test_run_without_a_command_says_where_to_put_it(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "run", "-n", "3")
    assert code == ExitCode.USAGE
    assert "after `--`" in err


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "--version")
    assert (code, out.strip()) == (ExitCode.OK, f"clobi {__version__}")


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "run", "--help")
    assert code == ExitCode.OK
    assert "--agents" in out


# --- job ids ------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["abc", "1.5", "0", "-3", ""])
def test_a_job_id_must_be_a_positive_integer(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a job id"):
        job_id(text)


def test_a_non_integer_job_id_is_a_usage_error_naming_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run_main(capsys, "kill", "12", "x7")
    assert code == ExitCode.USAGE
    assert "clobi: error: argument JOB: not a job id: 'x7'" in err
    assert "Traceback" not in err


def test_an_unknown_state_is_a_usage_error_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "ls", "--state", "done")
    assert code == ExitCode.USAGE
    assert "unknown state 'done'" in err


def test_ids_are_summarised_as_runs() -> None:
    assert id_ranges([5, 1, 2, 3, 9, 12, 13]) == "1-3,5,9,12-13"


# --- exit codes ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.UsageError("x"), ExitCode.USAGE),
        (errors.SpecError(["a: b"]), ExitCode.BAD_SPEC),
        (errors.NotFound("x"), ExitCode.NOT_FOUND),
        (errors.StaleAttempt("x"), ExitCode.CONFLICT),
        (errors.SessionError("x"), ExitCode.SESSION),
        (errors.MissingExtra("x"), ExitCode.SESSION),
        (errors.StoreUnavailable("x"), ExitCode.STORE_UNAVAILABLE),
        (errors.UnsafeArchive("x"), ExitCode.SANDBOX),
        (TimeoutError("x"), ExitCode.TIMEOUT),
        (errors.Unauthorized("x"), ExitCode.UNAUTHORIZED),
        (errors.Forbidden("x"), ExitCode.FORBIDDEN),
        (KeyboardInterrupt(), ExitCode.INTERRUPTED),
        (errors.ClobiError("x"), ExitCode.INTERNAL),
        (RuntimeError("x"), ExitCode.INTERNAL),
    ],
)
def test_each_error_class_maps_to_its_named_exit_code(exc: BaseException, code: ExitCode) -> None:
    assert exit_code_for(exc) == code


def test_the_exit_codes_keep_their_documented_numbers() -> None:
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 70, 130]


# --- error printing -----------------------------------------------------------------------
def test_a_missing_session_is_an_error_line_without_a_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run_main(capsys, "ls", "--session", str(tmp_path / "nowhere"))
    assert code == ExitCode.SESSION
    assert out == ""
    assert err.startswith("clobi: error: ")
    assert "clobi session init" in err
    assert "Traceback" not in err


def test_an_unknown_job_is_not_found_with_its_id(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert run_main(capsys, "session", "init", str(tmp_path / "s"))[0] == ExitCode.OK
    code, _, err = run_main(capsys, "show", "--session", str(tmp_path / "s"), "4242")
    assert code == ExitCode.NOT_FOUND
    assert "4242" in err


def test_an_unexpected_exception_is_an_internal_error_with_a_debug_hint(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_main, "parse", _parse_to(_boom))
    code, _, err = run_main(capsys, "ls")
    assert code == ExitCode.INTERNAL
    assert "clobi: internal error: RuntimeError: boom" in err
    assert "CLOBI_DEBUG=1" in err
    assert "Traceback" not in err


def test_clobi_debug_shows_the_traceback_of_an_internal_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOBI_DEBUG", "1")
    monkeypatch.setattr(cli_main, "parse", _parse_to(_boom))
    code, _, err = run_main(capsys, "ls")
    assert code == ExitCode.INTERNAL
    assert "Traceback" in err


def test_ctrl_c_exits_with_130(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_main, "parse", _parse_to(_interrupt))
    code, _, err = run_main(capsys, "ls")
    assert code == 130
    assert "interrupted" in err


def test_the_wait_summary_counts_states_in_lifecycle_order() -> None:
    from clobi.cli.output import fmt_counts

    counts = dict.fromkeys(JobState, 0) | {JobState.FAILED: 2, JobState.SUCCEEDED: 5}
    assert fmt_counts(counts) == "5 succeeded, 2 failed"
    assert fmt_counts(dict.fromkeys(JobState, 0), keep=[JobState.SUCCEEDED]) == "0 succeeded"


def _parse_to(handler: object) -> object:
    def fake_parse(argv: list[str]) -> argparse.Namespace:
        return argparse.Namespace(func=handler)

    return fake_parse


def _boom(args: argparse.Namespace) -> int:
    raise RuntimeError("boom")


def _interrupt(args: argparse.Namespace) -> int:
    raise KeyboardInterrupt


# --- local agents of `clobi run` ----------------------------------------------------------
@pytest.mark.parametrize(
    ("machine", "job_cpus", "asked", "expected"),
    [
        (2, 1.0, None, (2, 1.0)),  # one agent per slot by default
        (8, 2.0, None, (4, 2.0)),
        (2, 4.0, None, (1, 4.0)),  # a job bigger than the machine still gets an agent
        (4, 1.0, 1, (1, 4.0)),  # --agents 1: one agent with every cpu
        (4, 0.5, None, (4, 1.0)),  # never more agents than cpus
    ],
)
def test_clobi_run_spreads_slots_over_agent_processes(
    machine: int, job_cpus: float, asked: int | None, expected: tuple[int, float]
) -> None:
    from clobi.cli.runagents import agent_shares

    assert agent_shares(machine, job_cpus, asked) == expected


def test_tables_show_user_text_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    from clobi.cli.output import print_table

    print_table(["id", "name"], [[1, "[red]x[/red]\x1b[2J"], [22, None]])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["id", "name"]
    assert out[2] == "1   [red]x[/red]\\x1b[2J"
    assert out[3] == "22"
