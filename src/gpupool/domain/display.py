"""How amounts, priorities and durations are written for people: the few constants and formatters that the CLI
prints with on every command. Kept apart from `resources` and `specs` (which re-export them) because importing those,
with their dataclasses and parsers, is a noticeable part of a CLI command's start-up (benchmarks/cli)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

MILLI_PER_GPU = 1000  # one whole GPU in milli-GPU: the unit every GPU amount is counted in
# the named priorities of a spec (any number 0..MAX_PRIORITY is allowed too); normal sits mid-range so that
# both more and less urgent work can be expressed around it
PRIORITY_NAMES: Mapping[str, int] = MappingProxyType({"low": 100, "normal": 500, "high": 900})
MAX_PRIORITY = 1000


def format_cpu(milli: int) -> str:
    """Human CPU: 4000 -> '4', 500 -> '0.5'."""
    return f"{milli / 1000:g}"


def format_memory(mib: int) -> str:
    """Human memory: 16384 -> '16 GiB', 512 -> '512 MiB'."""
    return f"{mib / 1024:g} GiB" if mib >= 1024 else f"{mib} MiB"


def format_gpu(milli: int) -> str:
    """Human GPU amount: 1500 -> '1.5'."""
    return f"{milli / MILLI_PER_GPU:g}"


def priority_name(value: int) -> str:
    """'high' for 900, '700' for a priority without a name."""
    names = {v: k for k, v in PRIORITY_NAMES.items()}
    return names.get(value, str(value))


def duration_text(seconds: float) -> str:
    """'2h', '1h30m', '45s': a short human duration."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs and not hours else ""]
    return "".join(parts) or "0s"
