"""Turn a loaded job spec (a dict from TOML/YAML/JSON) into a `JobSpec`, or list what is wrong.

Every problem is collected with its dotted path (`resources.memory`, `outputs[2]`) before one
`SpecError` is raised, so a user fixes a spec in one round. Each key has a small parser in a
table; a parser reports its problems and returns None, or returns the parsed value. A key
whose value is null (YAML `key:` with nothing after it) counts as not given.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import PurePosixPath
from typing import Any

from clobi.errors import SpecError
from clobi.model.spec import ArraySpec, InputItem, JobSpec, Resources, Retries
from clobi.model.units import parse_bytes, parse_duration_s

MAX_ARRAY_COUNT = 10_000_000
MAX_PRIORITY = 1_000_000
MAX_RETRIES = 1_000_000
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LABEL = re.compile(r"[A-Za-z0-9_.:=-]{1,64}")


@dataclass
class _Report:
    """The problems found so far, each as "path: message"."""

    problems: list[str] = field(default_factory=list)

    def add(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}" if path else message)


Parser = Callable[[object, str, _Report], Any]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "a list"
    return names.get(type(value), f"a {type(value).__name__}")


def _expected(what: str, value: object) -> str:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    hint = f' (quote it: "{value}")' if number and what == "a string" else ""
    return f"expected {what}, got {_kind(value)}{hint}"


# --- primitives -------------------------------------------------------------------------------


def _string(value: object, path: str, report: _Report) -> str | None:
    if isinstance(value, str):
        return value
    report.add(path, _expected("a string", value))
    return None


def _bool(value: object, path: str, report: _Report) -> bool | None:
    if isinstance(value, bool):
        return value
    report.add(path, _expected("true or false", value))
    return None


def _int_in(value: object, path: str, report: _Report, *, low: int, high: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        report.add(path, _expected("a whole number", value))
    elif not low <= value <= high:
        report.add(path, f"must be ≥ {low:_}" if value < low else f"must be ≤ {high:_}")
    else:
        return value
    return None


def _list(value: object, path: str, report: _Report, *, item: Parser) -> tuple[Any, ...] | None:
    if not isinstance(value, list | tuple):
        report.add(path, _expected("a list", value))
        return None
    parsed = tuple(item(v, f"{path}[{i}]", report) for i, v in enumerate(value))
    return None if None in parsed else parsed


def _matching(pattern: re.Pattern[str], message: str) -> Parser:
    def parse(value: object, path: str, report: _Report) -> str | None:
        text = _string(value, path, report)
        if text is not None and not pattern.fullmatch(text):
            report.add(path, message)
            return None
        return text

    return parse


def _relative(value: object, path: str, report: _Report, *, what: str = "path") -> str | None:
    text = _string(value, path, report)
    if text is None:
        return None
    pure = PurePosixPath(text)
    if not text or pure.is_absolute() or ".." in pure.parts:
        report.add(path, f"must be a relative {what} without '..'")
        return None
    return text


def _table(
    value: object, path: str, report: _Report, parsers: Mapping[str, Parser]
) -> dict[str, Any] | None:
    """Parse each known key of a table; report unknown keys, with the closest known one."""
    if not isinstance(value, Mapping):
        report.add(path, _expected("a table", value))
        return None
    parsed: dict[str, Any] = {}
    for key, item in value.items():
        parser = parsers.get(key) if isinstance(key, str) else None
        if parser is None:
            report.add(_join(path, str(key)), _unknown_key(str(key), parsers))
        elif item is not None:
            parsed[key] = parser(item, _join(path, key), report)
    return {k: v for k, v in parsed.items() if v is not None}


def _unknown_key(key: str, known: Mapping[str, Parser]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"unknown key (did you mean '{close[0]}'?)" if close else "unknown key"


def _size(value: object, path: str, report: _Report) -> int | None:
    try:
        return parse_bytes(value)
    except ValueError as exc:
        report.add(path, str(exc))
        return None


def _duration(value: object, path: str, report: _Report, *, positive: bool = False) -> float | None:
    try:
        seconds = parse_duration_s(value)
    except ValueError as exc:
        report.add(path, str(exc))
        return None
    if positive and seconds <= 0:
        report.add(path, "must be longer than 0s")
        return None
    return seconds


# --- keys -------------------------------------------------------------------------------------


def _command(value: object, path: str, report: _Report) -> str | tuple[str, ...] | None:
    """A string (checked against `shell` later) or a non-empty argv list."""
    if isinstance(value, str):
        return value if _argument(value.strip(), path, report) else None
    argv = _list(value, path, report, item=_argument)
    if argv == ():
        report.add(path, "must not be empty; give the program and its arguments as a list")
        return None
    return argv


def _argument(value: object, path: str, report: _Report) -> str | None:
    text = _string(value, path, report)
    if text == "":
        report.add(path, "must not be empty")
        return None
    return text


def _env_entry(name: str, value: object, path: str, report: _Report) -> str | None:
    if not _ENV_NAME.fullmatch(name):
        report.add(path, "not a valid environment variable name")
    elif name.startswith("CLOBI_"):
        report.add(path, "names starting with CLOBI_ are reserved for Clobi")
    else:
        return _string(value, path, report)
    return None


def _env(value: object, path: str, report: _Report) -> dict[str, str] | None:
    if not isinstance(value, Mapping):
        report.add(path, _expected("a table of NAME = value", value))
        return None
    env = {str(k): _env_entry(str(k), v, _join(path, str(k)), report) for k, v in value.items()}
    return None if None in env.values() else {k: v for k, v in env.items() if v is not None}


def _workdir(value: object, path: str, report: _Report) -> str | None:
    text = _relative(value, path, report)
    return None if text is None else str(PurePosixPath(text))


def _name(value: object, path: str, report: _Report) -> str | None:
    text = _string(value, path, report)
    if text is not None and (len(text) > 256 or not text.isprintable()):
        report.add(path, "must be at most 256 printable characters")
        return None
    return text


_tag = _matching(_LABEL, "must be 1-64 of the characters A-Z a-z 0-9 _ . : = -")
_retry_count = partial(_int_in, low=0, high=MAX_RETRIES)


# --- inputs -----------------------------------------------------------------------------------


def _input_from_string(value: str, path: str, report: _Report) -> InputItem | None:
    name = PurePosixPath(value).name
    if not value or name in ("", ".", ".."):
        report.add(path, f"cannot name {value!r} in the sandbox; use {{ from = ..., to = ... }}")
        return None
    return InputItem(source=value, dest=name)


_INPUT_KEYS: dict[str, Parser] = {"from": _argument, "to": _relative}


def _input(value: object, path: str, report: _Report) -> InputItem | None:
    if isinstance(value, str):
        return _input_from_string(value, path, report)
    if not isinstance(value, Mapping):
        report.add(path, _expected("a path or a table { from, to }", value))
        return None
    known = len(report.problems)
    parts = _table(value, path, report, _INPUT_KEYS) or {}
    if value.get("from") is None:
        report.add(_join(path, "from"), "required")
    if len(report.problems) > known:
        return None
    if "to" not in parts:
        return _input_from_string(parts["from"], path, report)
    dest = str(PurePosixPath(parts["to"]))
    if dest == ".":
        report.add(_join(path, "to"), "must name a file or directory inside the sandbox")
        return None
    return InputItem(source=parts["from"], dest=dest)


def _inputs(value: object, path: str, report: _Report) -> tuple[InputItem, ...] | None:
    items = _list(value, path, report, item=_input)
    if items is None:
        return None
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        where = first.setdefault(item.dest, i)
        if where != i:
            report.add(
                f"{path}[{i}]", f"destination {item.dest!r} is already used by {path}[{where}]"
            )
    return items if len(first) == len(items) else None


# --- resources, retries, array, the spec ------------------------------------------------------


def _cpus(value: object, path: str, report: _Report) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        report.add(path, _expected("a number", value))
    elif not (math.isfinite(value) and value > 0):
        report.add(path, "must be more than 0")
    else:
        return float(value)
    return None


_RESOURCE_KEYS: dict[str, Parser] = {
    "cpus": _cpus,
    "memory": _size,
    "gpus": partial(_int_in, low=0, high=1024),
    "walltime": partial(_duration, positive=True),
    "disk": _size,  # accepted for compatibility; agents do not account for disk yet
}
_RESOURCE_FIELDS = {
    "cpus": "cpus",
    "memory": "memory_bytes",
    "gpus": "gpus",
    "walltime": "walltime_s",
}


def _resources(value: object, path: str, report: _Report) -> Resources | None:
    parts = _table(value, path, report, _RESOURCE_KEYS)
    if parts is None:
        return None
    return Resources(**{_RESOURCE_FIELDS[k]: v for k, v in parts.items() if k in _RESOURCE_FIELDS})


_RETRY_KEYS: dict[str, Parser] = {
    "count": _retry_count,
    "backoff": _duration,
    "max_backoff": _duration,
}


def _retries(value: object, path: str, report: _Report) -> Retries | None:
    if not isinstance(value, Mapping):
        count = _retry_count(value, path, report)
        return None if count is None else Retries(count=count)
    parts = _table(value, path, report, _RETRY_KEYS)
    if parts is None:
        return None
    retries = Retries(
        count=parts.get("count", 0),
        backoff_s=parts.get("backoff", Retries.backoff_s),
        max_backoff_s=parts.get("max_backoff", Retries.max_backoff_s),
    )
    if retries.max_backoff_s < retries.backoff_s:
        report.add(_join(path, "max_backoff"), "must not be shorter than backoff")
    return retries


_array_count = partial(_int_in, low=1, high=MAX_ARRAY_COUNT)


def _array_value(value: object, path: str, report: _Report) -> str | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return _string(value, path, report)


def _array_values(value: object, path: str, report: _Report) -> tuple[str, ...] | None:
    values = _list(value, path, report, item=_array_value)
    if values == ():
        report.add(path, "must not be empty")
        return None
    if values is not None and len(values) > MAX_ARRAY_COUNT:
        report.add(path, f"must have at most {MAX_ARRAY_COUNT:_} values")
        return None
    return values


_ARRAY_KEYS: dict[str, Parser] = {"count": _array_count, "values": _array_values}


def _array(value: object, path: str, report: _Report) -> ArraySpec | None:
    """`{ count = N }` or `{ values = [...] }`, or the shorthands `N` and `[...]`."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = {"count": value}
    elif isinstance(value, list | tuple):
        value = {"values": value}
    elif not isinstance(value, Mapping):
        report.add(path, _expected("a count, a list of values or a table", value))
        return None
    parts = _table(value, path, report, _ARRAY_KEYS)
    given = [k for k in _ARRAY_KEYS if value.get(k) is not None]
    if len(given) != 1:
        report.add(path, "give exactly one of count or values")
    if parts is None or len(parts) != 1 or len(given) != 1:
        return None
    return ArraySpec(count=parts.get("count"), values=parts.get("values"))


_SPEC_KEYS: dict[str, Parser] = {
    "command": _command,
    "name": _name,
    "shell": _bool,
    "env": _env,
    "workdir": _workdir,
    "inputs": _inputs,
    "outputs": partial(_list, item=partial(_relative, what="glob")),
    "resources": _resources,
    "requires": partial(_list, item=_tag),
    "priority": partial(_int_in, low=-MAX_PRIORITY, high=MAX_PRIORITY),
    "retries": _retries,
    "array": _array,
    "tags": partial(_list, item=_tag),
}


def _final_command(data: Mapping[str, Any], parts: dict[str, Any], report: _Report) -> None:
    """Check the command against `shell`, which may come after it in the file."""
    command, shell = parts.get("command"), parts.get("shell", False)
    if data.get("command") is None:
        report.add("command", "required")
    elif isinstance(command, str) and not shell:
        report.add("command", "a string needs `shell = true`; or give a list like ['prog', 'arg']")
    elif isinstance(command, str):
        parts["command"] = (command,)
    elif shell and command is not None and len(command) > 1:
        report.add("command", "with `shell = true`, give one string for `sh -c`")


def parse_spec(data: object, source: str = "") -> JobSpec:
    """Validate a loaded spec and build a `JobSpec`.

    Raises `SpecError(problems, source)` listing every problem as "path: message".
    """
    report = _Report()
    if not isinstance(data, Mapping):
        raise SpecError([f"the top level must be a table of keys, not {_kind(data)}"], source)
    parts = _table(data, "", report, _SPEC_KEYS) or {}
    _final_command(data, parts, report)
    if report.problems:
        raise SpecError(report.problems, source)
    return JobSpec(**parts)


def parse_array_flag(text: str) -> ArraySpec:
    """An array from a command-line flag: "N" is a count, "a,b,c" are values.

    Raises ValueError with a message for the user.
    """
    text, report = text.strip(), _Report()
    if "," in text:
        values = _array_values([v.strip() for v in text.split(",") if v.strip()], "", report)
        array = ArraySpec(values=values) if values else None
    elif re.fullmatch(r"[0-9]+", text):
        count = _array_count(int(text), "", report)
        array = ArraySpec(count=count) if count else None
    else:
        raise ValueError(f"expected a count like '10' or values like 'a,b,c', not {text!r}")
    if array is None:
        raise ValueError("; ".join(report.problems))
    return array
