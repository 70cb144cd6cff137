"""Durations and sizes as people write them ("1h30m", "1.5G") and as Clobi shows them.

Durations are float seconds and sizes are int bytes everywhere else; only this module knows
about their spellings.
"""

from __future__ import annotations

import math
import re

DURATION_HINT = "expected a duration like '90s' or '2h'"
SIZE_HINT = "expected a size like '512M' or '2G'"

_DURATION_UNITS_S = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_PART = re.compile(rf"\s*({_NUMBER})\s*([a-z]+)")
_PLAIN_NUMBER = re.compile(rf"\s*{_NUMBER}\s*")

_PREFIXES = "KMGTP"
_SIZE = re.compile(rf"\s*({_NUMBER})\s*(?:([KMGTP])(i?)B?|B)?\s*", re.IGNORECASE)


def _finite_non_negative(value: float, hint: str) -> float:
    if not math.isfinite(value):
        raise ValueError(hint)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def parse_duration_s(value: object) -> float:
    """Seconds from a number of seconds or a string like "90", "2s", "1.5m", "1h30m", "500ms".

    Units: ms, s, m (minutes), h, d, w; parts add up. Raises ValueError with a short message.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(DURATION_HINT)
    if not isinstance(value, str):
        return _finite_non_negative(float(value), DURATION_HINT)
    text = value.strip().lower()
    if _PLAIN_NUMBER.fullmatch(text):
        return float(text)
    return _sum_duration_parts(text)


def _sum_duration_parts(text: str) -> float:
    total, end = 0.0, 0
    for match in _DURATION_PART.finditer(text):
        unit = _DURATION_UNITS_S.get(match.group(2))
        if match.start() != end or unit is None:
            raise ValueError(DURATION_HINT)
        total += float(match.group(1)) * unit
        end = match.end()
    if end == 0 or text[end:].strip():
        raise ValueError(DURATION_HINT)
    return total


def parse_bytes(value: object) -> int:
    """Bytes from an int or a string like "512", "512K", "1.5G", "2GiB", "100MB".

    K/M/G/T/P and KiB/MiB/… are binary (1024-based); KB/MB/… are decimal. Fractions are
    rounded to whole bytes. Raises ValueError with a short message.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(SIZE_HINT)
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(SIZE_HINT)
    if not isinstance(value, str):
        return int(_finite_non_negative(value, SIZE_HINT))
    match = _SIZE.fullmatch(value)
    if match is None:
        raise ValueError(SIZE_HINT)
    number, prefix, binary = match.group(1), match.group(2), match.group(3)
    multiple = 1 if not prefix else _unit_size(prefix, binary, value)
    return round(float(number) * multiple)


def _unit_size(prefix: str, binary: str, text: str) -> int:
    power = _PREFIXES.index(prefix.upper()) + 1
    decimal = not binary and text.strip()[-1] in "bB"
    return int(1000**power if decimal else 1024**power)


def _trim(number: float, places: int) -> str:
    """`number` with at most `places` decimals and no trailing zeros."""
    return f"{number:.{places}f}".rstrip("0").rstrip(".") if places else f"{number:.0f}"


def _pair(big: int, big_unit: str, small: int, small_unit: str) -> str:
    return f"{big}{big_unit}{small}{small_unit}" if small else f"{big}{big_unit}"


def format_duration(seconds: float) -> str:
    """A short display form such as "500ms", "1.5s", "2m30s", "1h30m" or "2d3h".

    Shows at most two units, so it is rounded; `parse_duration_s` reads it back.
    """
    if not math.isfinite(seconds):
        return str(seconds)
    if seconds < 0:
        return "-" + format_duration(-seconds)
    # Each limit sits where rounding would reach the next unit, so 59.97s shows as "1m", not "60s".
    if seconds < 0.9995:
        text = _trim(seconds * 1000, 2 if seconds < 0.01 else 0)
        return "0s" if text == "0" else f"{text}ms"
    if seconds < 59.95:
        return _trim(seconds, 2 if seconds < 10 else 1) + "s"
    if seconds < 3599.5:
        minutes, rest = divmod(round(seconds), 60)
        return _pair(minutes, "m", rest, "s")
    return _format_long(seconds)


def _format_long(seconds: float) -> str:
    if seconds < 86370:
        hours, minutes = divmod(round(seconds / 60), 60)
        return _pair(hours, "h", minutes, "m")
    days, hours = divmod(round(seconds / 3600), 24)
    return _pair(days, "d", hours, "h")


def format_bytes(n: int) -> str:
    """A short display form with binary units: "512B", "1.5KiB", "2GiB"."""
    if n < 0:
        return "-" + format_bytes(-n)
    unit, value = "B", float(n)
    for prefix in _PREFIXES:
        if round(value, 1) < 1024:
            break
        unit, value = f"{prefix}iB", value / 1024
    return f"{_trim(value, 1)}{unit}"
