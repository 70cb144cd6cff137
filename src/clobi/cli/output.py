"""What the command modules share: common flags, job ids, tables, JSON and formatting.

`rich` and the client are imported lazily: `clobi --help` and `clobi agent` should not pay
for them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from clobi.errors import NotFound
from clobi.model.states import JobState

if TYPE_CHECKING:
    from clobi.client import Client
    from clobi.model.records import JobRecord

# The keys of a job in `--json` output; scripts rely on them.
JOB_KEYS = (
    "id",
    "name",
    "state",
    "priority",
    "array_index",
    "attempts",
    "exit_code",
    "reason",
    "tags",
    "created_at",
    "updated_at",
    "lost_count",
    "retries_left",
)


# --- flags and argument types ----------------------------------------------------------------
def add_session(parser: argparse.ArgumentParser) -> None:
    """`--session DIR` on a subcommand; it does not hide `clobi --session DIR <command>`."""
    parser.add_argument(
        "--session",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="the session directory (default: $CLOBI_SESSION, "
        "else the nearest clobi.toml above the current directory)",
    )


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def _positive(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value > 0 else None


def job_id(text: str) -> int:
    """An argparse type: a job id is a positive integer."""
    value = _positive(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"not a job id: {text!r} (job ids are positive integers)")
    return value


def positive_int(text: str) -> int:
    value = _positive(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return value


def state_name(text: str) -> JobState:
    try:
        return JobState(text.strip().lower())
    except ValueError:
        known = ", ".join(s.value for s in JobState)
        raise argparse.ArgumentTypeError(f"unknown state {text!r} (one of {known})") from None


# --- sessions and jobs ---------------------------------------------------------------------
def open_client(args: argparse.Namespace) -> Client:
    """A client for the session the arguments name (`--session`, $CLOBI_SESSION, clobi.toml)."""
    from clobi.client import Client

    return Client(getattr(args, "session", None))


def require_jobs(client: Client, ids: Sequence[int]) -> None:
    """Raise `NotFound` naming every id that is not a job of the session."""
    known = {j.id for j in client.list(ids=ids, limit=None)}
    missing = [i for i in dict.fromkeys(ids) if i not in known]
    if len(missing) == 1:
        raise NotFound(f"job {missing[0]}: no such job")
    if missing:
        raise NotFound(f"jobs {id_ranges(missing)}: no such jobs")


# --- JSON --------------------------------------------------------------------------------
def job_dict(job: JobRecord) -> dict[str, Any]:
    data = dataclasses.asdict(job)
    data["state"] = job.state.value
    data["tags"] = list(job.tags)
    return {k: data[k] for k in JOB_KEYS}


def plain(obj: Any) -> Any:
    """A dataclass record as JSON-ready data (enums become their values)."""
    return json.loads(json.dumps(dataclasses.asdict(obj), default=_json_default))


def print_json(data: Any, file: IO[str] | None = None) -> None:
    out = file or sys.stdout
    json.dump(data, out, indent=2, default=_json_default)
    out.write("\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, frozenset | set):
        return sorted(obj)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


# --- tables ------------------------------------------------------------------------------
def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A plain table on stdout: aligned columns, no borders, bold headers on a terminal.

    Written by hand rather than with rich: `clobi ls` should answer in well under 100 ms, and
    cells (job names, reasons) are the user's text, shown as text: control characters are
    escaped and nothing is read as markup.
    """
    cells = [[safe_text(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    bold, reset = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")
    lines = [bold + _row(headers, widths) + reset, "  ".join("─" * w for w in widths)]
    lines += [_row(row, widths) for row in cells]
    sys.stdout.write("\n".join(lines) + "\n")


def _row(values: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()


def safe_text(value: object) -> str:
    """`value` as one line of printable text (control characters escaped)."""
    text = "" if value is None else str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def print_fields(fields: Sequence[tuple[str, object]]) -> None:
    """`key: value` lines with the values aligned."""
    width = max((len(k) for k, _ in fields), default=0)
    for key, value in fields:
        print(f"{key + ':':<{width + 1}} {'' if value is None else value}")


# --- formatting --------------------------------------------------------------------------
def fmt_time(ts: float | None) -> str:
    if ts is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def fmt_age(ts: float, now: float | None = None) -> str:
    from clobi.model.units import format_duration

    return format_duration(max(0.0, (now or time.time()) - ts))


def fmt_counts(counts: Mapping[JobState, int], *, keep: Iterable[JobState] = ()) -> str:
    """`3 succeeded, 1 failed`: states with jobs (and those in `keep`), in lifecycle order."""
    kept = set(keep)
    parts = [f"{counts.get(s, 0)} {s.value}" for s in JobState if counts.get(s, 0) or s in kept]
    return ", ".join(parts) or "no jobs"


def id_ranges(ids: Iterable[int]) -> str:
    """`1-5,9,12-20`: ids as runs."""
    runs: list[list[int]] = []
    for i in sorted(set(ids)):
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def exit_text(exit_code: int | None, reason: str) -> str:
    """`exit code 1, out of memory`: how a job or attempt ended, as far as known."""
    parts = [] if exit_code is None else [f"exit code {exit_code}"]
    if reason and reason not in parts:  # agents may give the exit code as the reason
        parts.append(reason)
    return ", ".join(parts)
