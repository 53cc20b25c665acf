"""A service's revision history as the console shows it: each revision (number, when, why) with a one-line
summary of what changed in its spec since the one before (the dotted keys changed, added and removed)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAX_KEYS = 8  # keys a summary names per kind of change; a rewrite of the whole spec would otherwise fill the row


@dataclass(frozen=True, slots=True)
class RevisionLine:
    """One revision of a service: its number, when it was made, why (who updated or rolled back), and what
    changed since the previous revision ("submitted" for the first)."""

    revision: int
    at: float
    reason: str
    changes: str


def flatten(spec: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The spec's values by dotted key (`replicas.max`); a list is one value."""
    out: dict[str, Any] = {}
    for key, value in spec.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def spec_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """What changed from `old` to `new`, by dotted key: "changed command, replicas.max; added env.DEBUG;
    removed models"; "no change" when they are equal. At most MAX_KEYS keys named per kind."""
    before, after = flatten(old), flatten(new)
    kinds = (
        ("changed", sorted(k for k in before.keys() & after.keys() if before[k] != after[k])),
        ("added", sorted(after.keys() - before.keys())),
        ("removed", sorted(before.keys() - after.keys())),
    )
    parts = []
    for label, keys in kinds:
        if keys:
            more = f" and {len(keys) - MAX_KEYS} more" if len(keys) > MAX_KEYS else ""
            parts.append(f"{label} {', '.join(keys[:MAX_KEYS])}{more}")
    return "; ".join(parts) or "no change"


def history(
    stored: Sequence[tuple[int, float, str, Mapping[str, Any]]], submitted_at: float, spec: Mapping[str, Any]
) -> list[RevisionLine]:
    """The revisions newest first, from the stored (revision, created_at, reason, spec) oldest first; a service
    never updated has none stored, and its one revision is its submitted `spec`."""
    rows = list(stored) or [(1, submitted_at, "submitted", spec)]
    lines = [RevisionLine(rows[0][0], rows[0][1], rows[0][2], "submitted")]
    for (_, _, _, old), (number, at, reason, new) in itertools.pairwise(rows):
        lines.append(RevisionLine(number, at, reason, spec_diff(old, new)))
    return lines[::-1]
