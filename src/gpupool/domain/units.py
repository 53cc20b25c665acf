"""The one grammar of sizes and durations: a number, optional spaces, a unit; durations may chain parts
(`1h30m`). Specs and queues (`gpupool.domain.resources`: memory in MiB, durations in whole seconds) and the
planner (`gpupool.plan.units`: bytes and seconds as floats) read text with these functions and tables, then
apply their own rules (a bare memory number is refused in a spec; the planner reads it as bytes).

Sizes: decimal units (K, M, G, T, P, with or without B: powers of 1000) and binary units (Ki, Mi, Gi, Ti,
Pi, with or without B: powers of 1024), any case; B alone is bytes. Durations: s/sec, m/min, h/hr, d/day/days,
w/week/weeks.
"""

from __future__ import annotations

import re

NUMBER = r"[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?"
_QUANTITY = re.compile(rf"\s*(?P<num>{NUMBER})\s*(?P<unit>[A-Za-z]*)\s*")
_DURATION_PART = re.compile(rf"(?P<num>{NUMBER})(?P<unit>[a-z]*)")

BYTES_PER_UNIT: dict[str, float] = {
    "": 1.0, "b": 1.0,
    "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12, "p": 1e15, "pb": 1e15,
    "ki": 2.0**10, "kib": 2.0**10, "mi": 2.0**20, "mib": 2.0**20, "gi": 2.0**30, "gib": 2.0**30,
    "ti": 2.0**40, "tib": 2.0**40, "pi": 2.0**50, "pib": 2.0**50,
}
SECONDS_PER_UNIT: dict[str, float] = {
    "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0, "w": 604800.0, "week": 604800.0, "weeks": 604800.0,
}


def split_quantity(text: str) -> tuple[float, str] | None:
    """(number, unit as written) for text like `16GiB`, `1.5 TB`, `90`; None when it is not a number with an
    optional unit."""
    match = _QUANTITY.fullmatch(text)
    return (float(match["num"]), match["unit"]) if match else None


def bytes_per(unit: str) -> float | None:
    """Bytes in one `unit` (any case; '' and 'B' are bytes); None for an unknown unit."""
    return BYTES_PER_UNIT.get(unit.lower())


def duration_seconds(text: str, bare_unit: str = "s") -> float | None:
    """Seconds in text like `90s`, `6h`, `1h30m`, `1h 30m`, `2w`; a bare number counts in `bare_unit` ('' to
    refuse it). None when the text is not a duration."""
    cleaned = text.strip().lower().replace(" ", "")
    parts = [(m["num"], m["unit"]) for m in _DURATION_PART.finditer(cleaned)]
    if not parts or "".join(n + u for n, u in parts) != cleaned:
        return None
    total = 0.0
    for number, unit in parts:
        factor = SECONDS_PER_UNIT.get(unit or bare_unit)
        if factor is None or (not unit and len(parts) > 1):
            return None
        total += float(number) * factor
    return total
