"""Durations and sizes: the spellings people write and the short forms Clobi shows."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clobi.model.units import format_bytes, format_duration, parse_bytes, parse_duration_s


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (90, 90.0),
        (2.5, 2.5),
        ("90", 90.0),
        ("2s", 2.0),
        ("1.5m", 90.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("2d", 172800.0),
        ("1w", 604800.0),
        ("500ms", 0.5),
        ("10min", 600.0),
        ("  45S ", 45.0),
        ("0", 0.0),
    ],
)
def test_durations_are_read_from_numbers_and_unit_strings(text: object, seconds: float) -> None:
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "h", "1h30", "2 hours", "-5s", "1e3s", "soon", None, True, [1], float("nan")]
)
def test_a_malformed_duration_is_refused_with_an_example(text: object) -> None:
    with pytest.raises(ValueError, match=r"expected a duration like '90s' or '2h'"):
        parse_duration_s(text)


def test_a_negative_number_of_seconds_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_duration_s(-1)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (512, 512),
        (2e9, 2_000_000_000),
        ("512", 512),
        ("512B", 512),
        ("512K", 512 * 1024),
        ("512k", 512 * 1024),
        ("1.5G", 3 * 2**29),
        ("2GiB", 2 * 2**30),
        ("2 GiB", 2 * 2**30),
        ("100MB", 100_000_000),
        ("1KB", 1000),
        ("3T", 3 * 2**40),
        ("1TB", 10**12),
        ("1.5", 2),  # a fraction of a byte is rounded
    ],
)
def test_sizes_use_binary_prefixes_unless_written_as_decimal_bytes(text: object, size: int) -> None:
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["", "G", "1X", "-1K", 1.5, True, None, "1 G B"])
def test_a_malformed_size_is_refused_with_an_example(text: object) -> None:
    with pytest.raises(ValueError, match=r"expected a size like '512M' or '2G'"):
        parse_bytes(text)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "0s"),
        (0.5, "500ms"),
        (0.0015, "1.5ms"),
        (1.5, "1.5s"),
        (45, "45s"),
        (150, "2m30s"),
        (120, "2m"),
        (5400, "1h30m"),
        (7200, "2h"),
        (183600, "2d3h"),
        (172800, "2d"),
        (-90, "-1m30s"),
    ],
)
def test_durations_are_shown_with_at_most_two_units(seconds: float, shown: str) -> None:
    assert format_duration(seconds) == shown


@pytest.mark.parametrize(
    ("size", "shown"),
    [(0, "0B"), (512, "512B"), (1024, "1KiB"), (1536, "1.5KiB"), (3 * 2**29, "1.5GiB")],
)
def test_sizes_are_shown_in_binary_units(size: int, shown: str) -> None:
    assert format_bytes(size) == shown


@given(st.floats(min_value=0.001, max_value=1e8))
def test_a_shown_duration_reads_back_as_about_the_same_duration(seconds: float) -> None:
    assert parse_duration_s(format_duration(seconds)) == pytest.approx(seconds, rel=0.03)


@given(st.integers(min_value=0, max_value=2**60))
def test_a_shown_size_reads_back_as_about_the_same_size(size: int) -> None:
    assert parse_bytes(format_bytes(size)) == pytest.approx(size, rel=0.05)
