"""Validating job specs: what is accepted, what it becomes, and how every mistake is listed."""

from __future__ import annotations

from typing import Any

import pytest

from clobi.errors import SpecError
from clobi.model.spec import ArraySpec, InputItem, JobSpec, Resources, Retries
from clobi.model.specparse import parse_array_flag, parse_spec


def spec(**keys: Any) -> JobSpec:
    """A spec with a valid command plus `keys`."""
    return parse_spec({"command": ["run.sh"], **keys})


def problems(data: object) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(data)
    return caught.value.problems


def problems_with(**keys: Any) -> list[str]:
    return problems({"command": ["run.sh"], **keys})


def test_a_minimal_spec_gets_the_defaults() -> None:
    assert spec() == JobSpec(command=("run.sh",))


def test_a_full_spec_becomes_the_matching_job_spec() -> None:
    parsed = parse_spec(
        {
            "command": ["sim", "--seed", "{index}"],
            "name": "sweep",
            "env": {"MODE": "fast"},
            "workdir": "./run/",
            "inputs": ["data/", {"from": "cfg/a.toml", "to": "conf/a.toml"}],
            "outputs": ["out/*.csv"],
            "resources": {"cpus": 2, "memory": "2G", "gpus": 1, "walltime": "1h", "disk": "10G"},
            "requires": ["region=eu"],
            "priority": -5,
            "retries": {"count": 2, "backoff": "10s", "max_backoff": "5m"},
            "array": {"count": 10},
            "tags": ["exp:42"],
        }
    )
    assert parsed == JobSpec(
        command=("sim", "--seed", "{index}"),
        name="sweep",
        env={"MODE": "fast"},
        workdir="run",
        inputs=(InputItem("data/", "data"), InputItem("cfg/a.toml", "conf/a.toml")),
        outputs=("out/*.csv",),
        resources=Resources(cpus=2.0, memory_bytes=2 * 2**30, gpus=1, walltime_s=3600.0),
        requires=("region=eu",),
        priority=-5,
        retries=Retries(count=2, backoff_s=10.0, max_backoff_s=300.0),
        array=ArraySpec(count=10),
        tags=("exp:42",),
    )


def test_a_spec_with_three_mistakes_reports_all_three_with_their_paths() -> None:
    found = problems(
        {
            "command": ["run.sh"],
            "array": {"count": 0},
            "resources": {"memory": "lots"},
            "outputs": ["a", "b", "../c"],
        }
    )
    assert found == [
        "array.count: must be ≥ 1",
        "resources.memory: expected a size like '512M' or '2G'",
        "outputs[2]: must be a relative glob without '..'",
    ]


def test_the_error_names_its_source_and_counts_the_problems() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec({"command": ["x"], "priority": "high", "tags": [1]}, source="job.toml")
    assert caught.value.source == "job.toml"
    assert "job.toml: 2 problems" in caught.value.message


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("comand", "comand: unknown key (did you mean 'command'?)"),
        ("retry", "retry: unknown key (did you mean 'retries'?)"),
        ("frobnicate", "frobnicate: unknown key"),
    ],
)
def test_an_unknown_key_is_a_problem_with_the_closest_known_key_suggested(
    key: str, problem: str
) -> None:
    assert problems_with(**{key: 1}) == [problem]


def test_an_unknown_resource_is_a_problem_under_its_table() -> None:
    assert problems_with(resources={"cpu": 2}) == [
        "resources.cpu: unknown key (did you mean 'cpus'?)"
    ]


def test_a_missing_command_is_reported_with_the_other_problems() -> None:
    assert problems({"name": 5}) == [
        'name: expected a string, got an integer (quote it: "5")',
        "command: required",
    ]


@pytest.mark.parametrize("data", [[1, 2], "command = 1", None])
def test_the_top_level_must_be_a_table(data: object) -> None:
    (problem,) = problems(data)
    assert problem.startswith("the top level must be a table of keys, not ")


# --- command and shell ------------------------------------------------------------------------


def test_a_string_command_runs_through_the_shell_when_asked() -> None:
    assert parse_spec({"command": "echo $HOME | wc", "shell": True}).command == ("echo $HOME | wc",)


def test_a_string_command_without_shell_suggests_a_list_or_shell() -> None:
    (problem,) = problems({"command": "echo hi"})
    assert problem.startswith("command: ")
    assert "shell = true" in problem
    assert "list" in problem


@pytest.mark.parametrize(
    ("command", "problem"),
    [
        ([], "command: must not be empty; give the program and its arguments as a list"),
        (["run", ""], "command[1]: must not be empty"),
        (["sleep", 5], 'command[1]: expected a string, got an integer (quote it: "5")'),
        ({"run": 1}, "command: expected a list, got a table"),
    ],
)
def test_an_argv_must_be_a_non_empty_list_of_non_empty_strings(
    command: object, problem: str
) -> None:
    assert problems({"command": command}) == [problem]


def test_a_shell_command_is_one_string() -> None:
    assert problems({"command": ["echo", "hi"], "shell": True}) == [
        "command: with `shell = true`, give one string for `sh -c`"
    ]


# --- integers, bools and ranges ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ({"priority": True}, "priority: expected a whole number, got a boolean"),
        ({"priority": 1.5}, "priority: expected a whole number, got a number"),
        ({"priority": 1_000_001}, "priority: must be ≤ 1_000_000"),
        ({"priority": -1_000_001}, "priority: must be ≥ -1_000_000"),
        ({"array": {"count": False}}, "array.count: expected a whole number, got a boolean"),
        ({"resources": {"gpus": True}}, "resources.gpus: expected a whole number, got a boolean"),
        ({"resources": {"cpus": 0}}, "resources.cpus: must be more than 0"),
        ({"resources": {"cpus": True}}, "resources.cpus: expected a number, got a boolean"),
        ({"retries": -1}, "retries: must be ≥ 0"),
        ({"shell": "yes"}, "shell: expected true or false, got a string"),
    ],
)
def test_a_bool_is_not_a_number_and_numbers_stay_in_range(
    keys: dict[str, Any], problem: str
) -> None:
    assert problems_with(**keys) == [problem]


@pytest.mark.parametrize("priority", [-1_000_000, -3, 0, 1_000_000])
def test_a_priority_may_have_either_sign(priority: int) -> None:
    assert spec(priority=priority).priority == priority


# --- array ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("array", "parsed"),
    [
        (10, ArraySpec(count=10)),
        (["a", "b"], ArraySpec(values=("a", "b"))),
        ({"count": 3}, ArraySpec(count=3)),
        ({"values": [1, 2.5, "x"]}, ArraySpec(values=("1", "2.5", "x"))),
    ],
)
def test_an_array_is_a_count_or_values_in_full_or_shorthand_form(
    array: object, parsed: ArraySpec
) -> None:
    assert spec(array=array).array == parsed


@pytest.mark.parametrize(
    ("array", "problem"),
    [
        ({"count": 2, "values": ["a"]}, "array: give exactly one of count or values"),
        ({}, "array: give exactly one of count or values"),
        ([], "array.values: must not be empty"),
        ({"count": 10_000_001}, "array.count: must be ≤ 10_000_000"),
        ({"values": ["a", True]}, "array.values[1]: expected a string, got a boolean"),
        (True, "array: expected a count, a list of values or a table, got a boolean"),
    ],
)
def test_a_malformed_array_is_a_problem(array: object, problem: str) -> None:
    assert problems_with(array=array) == [problem]


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("10", ArraySpec(count=10)),
        (" 7 ", ArraySpec(count=7)),
        ("a,b,c", ArraySpec(values=("a", "b", "c"))),
        ("a, b", ArraySpec(values=("a", "b"))),
        ("only,", ArraySpec(values=("only",))),
    ],
)
def test_the_array_flag_is_a_count_or_comma_separated_values(text: str, parsed: ArraySpec) -> None:
    assert parse_array_flag(text) == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "must be ≥ 1"),
        ("abc", "expected a count like '10' or values like 'a,b,c'"),
        ("-3", "expected a count"),
        (",", "must not be empty"),
        ("20000000", "must be ≤ 10_000_000"),
    ],
)
def test_a_bad_array_flag_is_refused_with_a_message(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_array_flag(text)


# --- paths: workdir, inputs, outputs ----------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "parsed"),
    [
        (["data.csv"], (InputItem("data.csv", "data.csv"),)),
        (["../shared/lib/"], (InputItem("../shared/lib/", "lib"),)),
        (["/abs/ref.fa"], (InputItem("/abs/ref.fa", "ref.fa"),)),
        ([{"from": "a/x.txt", "to": "in/x.txt"}], (InputItem("a/x.txt", "in/x.txt"),)),
        ([{"from": "a/x.txt"}], (InputItem("a/x.txt", "x.txt"),)),
    ],
)
def test_inputs_are_packed_under_their_basename_or_their_to_path(
    inputs: list[object], parsed: tuple[InputItem, ...]
) -> None:
    assert spec(inputs=inputs).inputs == parsed


@pytest.mark.parametrize(
    ("inputs", "problem"),
    [
        (["a/x.txt", "b/x.txt"], "inputs[1]: destination 'x.txt' is already used by inputs[0]"),
        ([{"from": "x", "to": "/etc/x"}], "inputs[0].to: must be a relative path without '..'"),
        ([{"from": "x", "to": "../x"}], "inputs[0].to: must be a relative path without '..'"),
        (
            [{"from": "x", "to": "."}],
            "inputs[0].to: must name a file or directory inside the sandbox",
        ),
        ([{"to": "x"}], "inputs[0].from: required"),
        ([{"from": "x", "as": "y"}], "inputs[0].as: unknown key"),
        ([7], "inputs[0]: expected a path or a table { from, to }, got an integer"),
    ],
)
def test_a_bad_input_is_a_problem_at_its_index(inputs: list[object], problem: str) -> None:
    assert problems_with(inputs=inputs) == [problem]


def test_an_input_that_has_no_name_of_its_own_needs_a_to_path() -> None:
    (problem,) = problems_with(inputs=[".."])
    assert problem.startswith("inputs[0]: cannot name '..'")


@pytest.mark.parametrize("glob", ["/tmp/*", "../up", "a/../../b", ""])
def test_outputs_are_relative_globs_without_dot_dot(glob: str) -> None:
    assert problems_with(outputs=["ok/*", glob]) == [
        "outputs[1]: must be a relative glob without '..'"
    ]


@pytest.mark.parametrize(("workdir", "stored"), [(".", "."), ("./a/b/", "a/b"), ("src", "src")])
def test_a_workdir_is_a_normalized_relative_path(workdir: str, stored: str) -> None:
    assert spec(workdir=workdir).workdir == stored


@pytest.mark.parametrize("workdir", ["/abs", "a/../..", ".."])
def test_a_workdir_outside_the_work_area_is_a_problem(workdir: str) -> None:
    assert problems_with(workdir=workdir) == ["workdir: must be a relative path without '..'"]


# --- env, resources, retries, labels ----------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"N": 5}, 'env.N: expected a string, got an integer (quote it: "5")'),
        ({"DEBUG": True}, "env.DEBUG: expected a string, got a boolean"),
        (
            {"CLOBI_JOB_ID": "1"},
            "env.CLOBI_JOB_ID: names starting with CLOBI_ are reserved for Clobi",
        ),
        ({"1X": "a"}, "env.1X: not a valid environment variable name"),
        ({"A-B": "a"}, "env.A-B: not a valid environment variable name"),
        (["A=1"], "env: expected a table of NAME = value, got a list"),
    ],
)
def test_env_is_a_table_of_valid_names_to_strings(env: object, problem: str) -> None:
    assert problems_with(env=env) == [problem]


def test_disk_is_accepted_but_not_kept() -> None:
    assert spec(resources={"disk": "10G"}).resources == Resources()


@pytest.mark.parametrize(
    ("walltime", "problem"),
    [
        (0, "resources.walltime: must be longer than 0s"),
        ("soon", "resources.walltime: expected a duration like '90s' or '2h'"),
    ],
)
def test_a_walltime_is_a_positive_duration(walltime: object, problem: str) -> None:
    assert problems_with(resources={"walltime": walltime}) == [problem]


@pytest.mark.parametrize(
    ("retries", "parsed"),
    [
        (3, Retries(count=3)),
        ({"count": 2, "backoff": 0}, Retries(count=2, backoff_s=0.0)),
        ({"backoff": "1m", "max_backoff": "1h"}, Retries(backoff_s=60.0, max_backoff_s=3600.0)),
    ],
)
def test_retries_are_a_count_or_a_table(retries: object, parsed: Retries) -> None:
    assert spec(retries=retries).retries == parsed


def test_a_max_backoff_shorter_than_the_backoff_is_a_problem() -> None:
    assert problems_with(retries={"backoff": "1h", "max_backoff": "1m"}) == [
        "retries.max_backoff: must not be shorter than backoff"
    ]


@pytest.mark.parametrize("key", ["tags", "requires"])
def test_tags_and_labels_are_short_words(key: str) -> None:
    assert problems_with(**{key: ["ok", "has space", "x" * 65]}) == [
        f"{key}[1]: must be 1-64 of the characters A-Z a-z 0-9 _ . : = -",
        f"{key}[2]: must be 1-64 of the characters A-Z a-z 0-9 _ . : = -",
    ]


def test_a_null_value_counts_as_not_given() -> None:
    assert spec(env=None, array=None, name=None) == spec()
