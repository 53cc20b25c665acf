"""Human quantities: parameter counts, sizes, bandwidths, durations."""

from __future__ import annotations

import pytest

from gpupool.plan.errors import PlanInputError
from gpupool.plan.units import (
    GIB,
    format_bytes,
    format_seconds,
    parse_bandwidth,
    parse_bytes,
    parse_count,
    parse_duration,
    parse_int,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [("7B", 7e9), ("70b", 70e9), ("175B", 175e9), ("1.5T", 1.5e12), ("350M", 350e6), ("6.74e9", 6.74e9),
     ("300B", 300e9), ("4k", 4e3), ("1_000", 1000.0)],
)
def test_counts(text: str, value: float) -> None:
    assert parse_count(text) == pytest.approx(value)


@pytest.mark.parametrize(
    ("text", "value"),
    [("16GiB", 16 * GIB), ("16GB", 16e9), ("10 gib", 10 * GIB), ("512MiB", 512 * 1024**2), ("1TB", 1e12),
     ("1073741824", float(GIB))],
)
def test_sizes(text: str, value: float) -> None:
    assert parse_bytes(text) == pytest.approx(value)


def test_bandwidths_and_durations() -> None:
    assert parse_bandwidth("4.0TB/s") == 4.0e12
    assert parse_bandwidth("64 GB/s") == 64e9
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("12h") == 12 * 3600
    assert parse_duration("2w") == 14 * 86400


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: parse_count("7Q", "--params"), "--params: unknown suffix 'Q'"),
        (lambda: parse_count("-7B", "--params"), "--params: cannot read"),
        (lambda: parse_count("0", "--params"), "must be a positive number"),
        (lambda: parse_bytes("16GiBs", "--memory"), "--memory: unknown unit"),
        (lambda: parse_bytes("lots", "--memory"), "--memory: cannot read 'lots'"),
        (lambda: parse_duration("3 fortnights"), "--deadline: unknown unit"),
        (lambda: parse_int("2.5", "--seq"), "--seq: '2.5' must be a whole number"),
    ],
)
def test_errors_name_the_option(call: object, message: str) -> None:
    with pytest.raises(PlanInputError, match=message):
        call()  # type: ignore[operator]


def test_formatting() -> None:
    assert format_bytes(80 * GIB) == "80.00 GiB"
    assert format_bytes(320 * 1024) == "320.00 KiB"
    assert format_seconds(9.25e-3) == "9.25 ms"
    assert format_seconds(182.5 * 86400) == "182.5 days"
    assert format_seconds(3 * 3600) == "3.0 h"
