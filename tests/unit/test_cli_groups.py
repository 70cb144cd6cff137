"""`clobi` builds only the parser of the command it runs; the table of groups must stay true."""

from __future__ import annotations

import argparse
import importlib

import pytest

from clobi.cli.main import GROUPS, Parser, build_parser, command_name


def _registered(group: str) -> tuple[str, ...]:
    sub = Parser(prog="clobi").add_subparsers()
    importlib.import_module(f"clobi.cli.{group}").register(sub)
    return tuple(sub.choices)


@pytest.mark.parametrize("group", GROUPS)
def test_each_group_registers_exactly_the_commands_the_table_names(group: str) -> None:
    assert _registered(group) == GROUPS[group]


def test_the_full_parser_lists_every_command_in_the_table_s_order() -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert tuple(sub.choices) == tuple(c for commands in GROUPS.values() for c in commands)


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (["ls", "--limit", "5"], "ls"),
        (["--session", "s", "kill", "3"], "kill"),
        (["--session=s", "agent"], "agent"),
        (["--session", "ls"], None),
        (["--help"], None),
        (["--sess", "s", "ls"], None),
        (["nosuchcommand"], None),
        ([], None),
    ],
)
def test_the_command_is_told_from_the_first_word_after_the_global_options(
    head: list[str], expected: str | None
) -> None:
    assert command_name(head) == expected


@pytest.mark.parametrize(
    "head",
    [
        ["ls", "--state", "queued", "--limit", "50"],
        ["--session", "s", "submit", "-n", "3", "--tag", "t"],
        ["token", "create", "--role", "user"],
        ["session", "init", "d"],
        ["agent", "--cpus", "2"],
    ],
)
def test_a_command_parses_the_same_with_only_its_group_registered(head: list[str]) -> None:
    alone = build_parser(command_name(head)).parse_args(head)
    assert vars(alone) == vars(build_parser().parse_args(head))
