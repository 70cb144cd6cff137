"""Job specs from files (TOML, YAML, JSON) and from `clobi submit/run -- CMD` flags.

This is the I/O edge of spec handling: it reads and decodes, turns parser errors into
`SpecError` problems with line numbers, and leaves validation to `clobi.model.specparse`.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from clobi.errors import SpecError
from clobi.model.spec import ArraySpec, JobSpec
from clobi.model.specparse import parse_spec

FORMATS_HINT = "job spec files are .toml, .yaml, .yml or .json"
_TOML_WHERE = re.compile(r"\s*\(at line (\d+), column \d+\)$|\s*\(at end of document\)$")
_NO_ENV: Mapping[str, str] = MappingProxyType({})


class _SyntaxProblem(Exception):
    """A decoder failed; carries the 1-based line when the decoder names one."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(f"line {line}: {message}" if line else message)


def _load_toml(text: str) -> object:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        where = _TOML_WHERE.search(message)
        if where is None:
            raise _SyntaxProblem(message, None) from None
        line = int(where.group(1)) if where.group(1) else text.count("\n") + 1
        raise _SyntaxProblem(message[: where.start()], line) from None


def _load_yaml(text: str) -> object:
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = ": ".join(str(m) for m in (exc.context, exc.problem) if m)
        raise _SyntaxProblem(message, mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise _SyntaxProblem(str(exc), None) from None


def _load_json(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _SyntaxProblem(exc.msg, exc.lineno) from None


_LOADERS: dict[str, Callable[[str], object]] = {
    ".toml": _load_toml,
    ".yaml": _load_yaml,
    ".yml": _load_yaml,
    ".json": _load_json,
}


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError(["cannot read the file: it is not UTF-8 text"], str(path)) from None
    except OSError as exc:
        raise SpecError([f"cannot read the file: {exc.strerror or exc}"], str(path)) from None


def load_spec_file(path: Path) -> tuple[JobSpec, Path]:
    """Read and validate a job spec file, choosing the format by the file's suffix.

    Returns the spec and the directory its relative `inputs` are resolved against (the
    file's own directory). A file with another suffix is read as TOML. Raises `SpecError`
    for unreadable files, syntax errors (with the line where the parser names one) and
    invalid specs.
    """
    text = _read_text(path)
    loader = _LOADERS.get(path.suffix.lower())
    try:
        data = (loader or _load_toml)(text)
    except _SyntaxProblem as exc:
        hint = [] if loader else [f"the file was read as TOML; {FORMATS_HINT}"]
        raise SpecError([str(exc), *hint], str(path)) from None
    return parse_spec(data, source=str(path)), path.parent


def _array_table(array: ArraySpec) -> dict[str, Any]:
    if array.values is not None:
        return {"values": list(array.values)}
    return {"count": array.count}


def spec_from_command(
    argv: Sequence[str],
    *,
    name: str = "",
    array: ArraySpec | None = None,
    cpus: float | None = None,
    retries: int | None = None,
    outputs: Sequence[str] = (),
    priority: int = 0,
    walltime: str | None = None,
    tags: Sequence[str] = (),
    env: Mapping[str, str] = _NO_ENV,
) -> JobSpec:
    """Build a spec from `clobi submit -- CMD ...` / `clobi run -- CMD ...` and their flags.

    The flags become a spec table that goes through `parse_spec`, so they are validated
    exactly like a file; problems are reported with the spec's key paths and the source
    "command line". An empty `argv` is reported as "command: required".
    """
    resources = {"cpus": cpus, "walltime": walltime}
    data: dict[str, Any] = {
        "command": list(argv) or None,
        "name": name,
        "array": None if array is None else _array_table(array),
        "resources": {k: v for k, v in resources.items() if v is not None},
        "retries": retries,
        "outputs": list(outputs),
        "priority": priority,
        "tags": list(tags),
        "env": dict(env),
    }
    return parse_spec(data, source="command line")
