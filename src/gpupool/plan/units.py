"""Parsing and formatting of human quantities: parameter counts, bytes, durations, bandwidths.

Counts use decimal suffixes (``7B`` = 7e9 parameters, ``300B`` tokens, ``1.5T``); bytes accept both
decimal (``KB``, ``MB``, ``GB``, ``TB`` = powers of 1000) and binary units (``KiB``, ``MiB``, ``GiB``,
``TiB`` = powers of 1024); durations accept ``s``, ``m``/``min``, ``h``, ``d`` and ``w``, chained as in
``1h30m``. Units and durations follow the one grammar of :mod:`gpupool.domain.units`.
Every parser raises :class:`PlanInputError` naming the option it was parsing.
"""

from __future__ import annotations

import math
import re

from gpupool.domain.units import bytes_per, duration_seconds
from gpupool.plan.errors import PlanInputError

GIB = 1024**3
_NUMBER = r"(?P<num>[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)"
_COUNT_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def _split(text: str, what: str) -> tuple[float, str]:
    match = re.fullmatch(_NUMBER + r"\s*(?P<unit>[A-Za-z/]*)", text.strip().replace("_", "").replace(",", ""))
    if match is None:
        raise PlanInputError(f"{what}: cannot read {text!r} as a number with an optional unit")
    return float(match["num"]), match["unit"]


def _positive(value: float, text: str, what: str) -> float:
    if not math.isfinite(value) or value <= 0:
        raise PlanInputError(f"{what}: {text!r} must be a positive number")
    return value


def parse_count(text: str | float, what: str = "count") -> float:
    """Read a count such as ``7B``, ``70b``, ``175e9``, ``1.5T`` or ``350M`` (decimal suffixes)."""
    if isinstance(text, int | float):
        return _positive(float(text), str(text), what)
    number, unit = _split(text, what)
    factor = _COUNT_SUFFIX.get(unit.lower())
    if factor is None:
        raise PlanInputError(f"{what}: unknown suffix {unit!r} in {text!r} (use K, M, B or T)")
    return _positive(number * factor, text, what)


def parse_int(text: str | int, what: str) -> int:
    """Read a whole positive count such as ``4096``, ``4k`` or ``32``."""
    value = parse_count(text, what)
    if value != int(value):
        raise PlanInputError(f"{what}: {text!r} must be a whole number")
    return int(value)


def parse_bytes(text: str | float, what: str = "memory") -> float:
    """Read a size such as ``16GiB`` (binary), ``80GB`` (decimal) or ``1073741824`` (bytes)."""
    if isinstance(text, int | float):
        return _positive(float(text), str(text), what)
    number, unit = _split(text, what)
    factor = bytes_per(unit)
    if factor is None:
        raise PlanInputError(f"{what}: unknown unit {unit!r} in {text!r} (use GB, GiB, MB, MiB, TB, TiB)")
    return _positive(number * factor, text, what)


def parse_bandwidth(text: str, what: str = "--bandwidth") -> float:
    """Read a bandwidth such as ``4.0TB/s``, ``64GB/s`` or ``900 GB/s``; returns bytes per second."""
    cleaned = text.strip()
    if cleaned.lower().endswith("/s"):
        cleaned = cleaned[:-2]
    return parse_bytes(cleaned, what)


def parse_duration(text: str, what: str = "--deadline") -> float:
    """Read a duration such as ``90d``, ``12h``, ``2w`` or ``3600s``; returns seconds."""
    seconds = duration_seconds(text)
    if seconds is None:
        _split(text, what)  # says when it is not even a number
        raise PlanInputError(f"{what}: unknown unit in {text!r} (use s, min, h, d or w, e.g. 90d or 1h30m)")
    return _positive(seconds, text, what)


def format_count(value: float) -> str:
    """Write a count with a decimal suffix: 6.74e9 -> ``6.74B``."""
    for factor, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}"


def format_bytes(value: float) -> str:
    """Write a size in binary units: 2**30 -> ``1.00 GiB``."""
    for factor, suffix in ((1024.0**4, "TiB"), (1024.0**3, "GiB"), (1024.0**2, "MiB"), (1024.0, "KiB")):
        if abs(value) >= factor:
            return f"{value / factor:.2f} {suffix}"
    return f"{value:.0f} B"


def format_seconds(value: float) -> str:
    """Write a duration in the largest sensible unit: 0.00925 -> ``9.25 ms``, 1.58e7 -> ``182.6 days``."""
    if value >= 2 * 86400:
        return f"{value / 86400:.1f} days"
    if value >= 2 * 3600:
        return f"{value / 3600:.1f} h"
    if value >= 120:
        return f"{value / 60:.1f} min"
    if value >= 1:
        return f"{value:.2f} s"
    return f"{value * 1e3:.3g} ms"
