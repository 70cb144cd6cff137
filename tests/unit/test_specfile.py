"""Reading job spec files and building specs from command-line flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clobi.errors import SpecError
from clobi.model.spec import ArraySpec, InputItem, JobSpec, Resources, Retries
from clobi.specfile import load_spec_file, spec_from_command

TOML = """\
name = "sweep"
command = ["sim", "--seed", "{index}"]
inputs = ["data/", { from = "cfg/a.toml", to = "conf/a.toml" }]
outputs = ["out/*.csv"]
retries = 2
array = ["low", "high"]

[resources]
cpus = 2
memory = "1G"
walltime = "30m"

[env]
MODE = "fast"
"""

YAML = """\
name: sweep
command: [sim, --seed, "{index}"]
inputs:
  - data/
  - {from: cfg/a.toml, to: conf/a.toml}
outputs: ["out/*.csv"]
retries: 2
array: [low, high]
resources: {cpus: 2, memory: 1G, walltime: 30m}
env: {MODE: fast}
"""

JSON = json.dumps(
    {
        "name": "sweep",
        "command": ["sim", "--seed", "{index}"],
        "inputs": ["data/", {"from": "cfg/a.toml", "to": "conf/a.toml"}],
        "outputs": ["out/*.csv"],
        "retries": 2,
        "array": ["low", "high"],
        "resources": {"cpus": 2, "memory": "1G", "walltime": "30m"},
        "env": {"MODE": "fast"},
    },
    indent=2,
)

EXPECTED = JobSpec(
    command=("sim", "--seed", "{index}"),
    name="sweep",
    env={"MODE": "fast"},
    inputs=(InputItem("data/", "data"), InputItem("cfg/a.toml", "conf/a.toml")),
    outputs=("out/*.csv",),
    resources=Resources(cpus=2.0, memory_bytes=2**30, walltime_s=1800.0),
    retries=Retries(count=2),
    array=ArraySpec(values=("low", "high")),
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_loading(path: Path) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec_file(path)
    assert caught.value.source == str(path)
    return caught.value.problems


@pytest.mark.parametrize(
    ("name", "text"),
    [("job.toml", TOML), ("job.yaml", YAML), ("job.yml", YAML), ("job.json", JSON)],
)
def test_toml_yaml_and_json_files_describe_the_same_spec(
    tmp_path: Path, name: str, text: str
) -> None:
    path = write(tmp_path, name, text)
    assert load_spec_file(path) == (EXPECTED, tmp_path)


def test_inputs_are_relative_to_the_directory_of_the_file(tmp_path: Path) -> None:
    (tmp_path / "deep").mkdir()
    path = write(tmp_path / "deep", "job.toml", TOML)
    assert load_spec_file(path)[1] == tmp_path / "deep"


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        ("job.toml", 'command = ["a"]\nname = \n', 2),
        ("job.toml", 'command = ["a"]\n\nname = "x\n', 3),
        ("job.toml", 'command = ["a",\n', 2),
        ("job.yaml", "command: [a]\nname: x: y\n", 2),
        ("job.yaml", "command: [a]\nenv: {A: 1\n", 3),
        ("job.json", '{"command": ["a"],\n "name": }', 2),
    ],
)
def test_a_syntax_error_is_one_problem_with_its_line_number(
    tmp_path: Path, name: str, text: str, line: int
) -> None:
    (problem,) = problems_loading(write(tmp_path, name, text))
    assert problem.startswith(f"line {line}: ")
    assert len(problem) > len(f"line {line}: ")


def test_a_file_with_another_suffix_is_read_as_toml(tmp_path: Path) -> None:
    spec, _ = load_spec_file(write(tmp_path, "job.spec", 'command = ["a"]\n'))
    assert spec.command == ("a",)


def test_an_unreadable_file_with_another_suffix_names_the_accepted_formats(tmp_path: Path) -> None:
    found = problems_loading(write(tmp_path, "job.txt", "command: [a]\n"))
    assert found[0].startswith("line 1: ")
    assert found[1] == ("the file was read as TOML; job spec files are .toml, .yaml, .yml or .json")


@pytest.mark.parametrize(
    ("name", "text"),
    [("job.yaml", "- a\n- b\n"), ("job.yaml", ""), ("job.json", "[1]")],
)
def test_the_top_level_of_a_file_must_be_a_table(tmp_path: Path, name: str, text: str) -> None:
    (problem,) = problems_loading(write(tmp_path, name, text))
    assert problem.startswith("the top level must be a table")


def test_an_invalid_spec_in_a_file_lists_its_problems_under_the_file_name(tmp_path: Path) -> None:
    path = write(tmp_path, "job.toml", 'command = "a b"\npriority = true\n')
    assert problems_loading(path) == [
        "priority: expected a whole number, got a boolean",
        "command: a string needs `shell = true`; or give a list like ['prog', 'arg']",
    ]


def test_a_missing_file_is_a_spec_error(tmp_path: Path) -> None:
    (problem,) = problems_loading(tmp_path / "nope.toml")
    assert problem.startswith("cannot read the file: ")


def test_a_binary_file_is_a_spec_error(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_bytes(b"\xff\xfe\x00command")
    assert problems_loading(path) == ["cannot read the file: it is not UTF-8 text"]


# --- from the command line --------------------------------------------------------------------


def test_a_command_line_becomes_an_argv_spec() -> None:
    assert spec_from_command(["./simulate.sh", "{index}"]) == JobSpec(
        command=("./simulate.sh", "{index}")
    )


def test_command_line_flags_fill_in_the_spec() -> None:
    spec = spec_from_command(
        ["sim"],
        name="sweep",
        array=ArraySpec(values=("a", "b")),
        cpus=0.5,
        retries=3,
        outputs=["*.out"],
        priority=-2,
        walltime="2h",
        tags=["t1"],
        env={"MODE": "fast"},
    )
    assert spec == JobSpec(
        command=("sim",),
        name="sweep",
        array=ArraySpec(values=("a", "b")),
        resources=Resources(cpus=0.5, walltime_s=7200.0),
        retries=Retries(count=3),
        outputs=("*.out",),
        priority=-2,
        tags=("t1",),
        env={"MODE": "fast"},
    )


def test_a_command_line_array_count_is_kept() -> None:
    assert spec_from_command(["sim"], array=ArraySpec(count=100)).array == ArraySpec(count=100)


def test_an_empty_command_line_is_refused() -> None:
    with pytest.raises(SpecError) as caught:
        spec_from_command([])
    assert caught.value.problems == ["command: required"]
    assert caught.value.source == "command line"


def test_bad_command_line_flags_are_all_reported() -> None:
    with pytest.raises(SpecError) as caught:
        spec_from_command(["sim"], cpus=0, walltime="soon", outputs=["/abs"], env={"CLOBI_X": "1"})
    assert caught.value.problems == [
        "resources.cpus: must be more than 0",
        "resources.walltime: expected a duration like '90s' or '2h'",
        "outputs[0]: must be a relative glob without '..'",
        "env.CLOBI_X: names starting with CLOBI_ are reserved for Clobi",
    ]
