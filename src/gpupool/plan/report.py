"""The shape of every planner answer: named terms, each with its value, unit, formula and source.

A :class:`Report` is what the command line renders as a table (or as JSON with ``--json``); the pure
functions of the planner build reports and never print.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gpupool.plan.units import format_bytes, format_count, format_seconds


class Unit(StrEnum):
    """The unit of a term's value; decides how the value is written for people."""

    BYTES = "bytes"
    FLOP = "FLOP"
    SECONDS = "s"
    COUNT = "count"
    NUMBER = "number"
    RATIO = "ratio"
    FLOPS = "FLOP/s"
    BYTES_PER_S = "bytes/s"
    TOKENS_PER_S = "tokens/s"
    PF_DAYS = "PF-days"


def format_value(value: float, unit: Unit) -> str:
    """Write ``value`` for people, in a unit chosen for its size (GiB, days, ms, 1e23 FLOP...)."""
    match unit:
        case Unit.BYTES:
            return format_bytes(value)
        case Unit.SECONDS:
            return format_seconds(value)
        case Unit.FLOP:
            return f"{value:.3e} FLOP"
        case Unit.FLOPS:
            return f"{value / 1e12:,.1f} TFLOP/s"
        case Unit.BYTES_PER_S:
            return f"{value / 1e9:,.0f} GB/s"
        case Unit.TOKENS_PER_S:
            return f"{value:,.0f} tokens/s"
        case Unit.PF_DAYS:
            return f"{value:,.0f} PF-days"
        case Unit.RATIO:
            return f"{value:.0%}"
        case Unit.COUNT:
            return format_count(value) if value >= 1e5 else f"{value:,.0f}"
        case _:
            return f"{value:,.4g}"


@dataclass(frozen=True)
class Term:
    """One figure of an answer: what it is, its value, and the formula (in words) that gave it."""

    key: str
    label: str
    value: float
    unit: Unit
    formula: str
    source: str = ""

    @property
    def display(self) -> str:
        """The value written for people."""
        return format_value(self.value, self.unit)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping of the term."""
        return {
            "key": self.key, "label": self.label, "value": self.value, "unit": str(self.unit),
            "display": self.display, "formula": self.formula, "source": self.source,
        }


@dataclass(frozen=True)
class Table:
    """A small extra table of an answer (for example the MIG profiles of a GPU, one row each)."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping: the rows as objects keyed by column."""
        return {"title": self.title, "rows": [dict(zip(self.columns, row, strict=True)) for row in self.rows]}


@dataclass(frozen=True)
class Report:
    """A planner answer: the inputs as understood, the terms, a summary for scripts, and notes."""

    title: str
    inputs: Mapping[str, Any]
    terms: Sequence[Term]
    summary: Mapping[str, Any] = field(default_factory=dict)
    notes: Sequence[str] = ()
    tables: Sequence[Table] = ()

    def term(self, key: str) -> Term:
        """The term named ``key``; raises ``KeyError`` when the report has none."""
        for term in self.terms:
            if term.key == key:
                return term
        raise KeyError(key)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping of the whole answer."""
        return {
            "title": self.title,
            "inputs": dict(self.inputs),
            "summary": dict(self.summary),
            "terms": [t.to_dict() for t in self.terms],
            "tables": [t.to_dict() for t in self.tables],
            "notes": list(self.notes),
        }
