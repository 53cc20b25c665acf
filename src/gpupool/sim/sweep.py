"""Aggregating inflation runs: medians over seeds per policy, and curves on a common grid."""

from __future__ import annotations

from collections.abc import Sequence
from statistics import median

from gpupool.sim.inflation import CHECKPOINTS, InflationResult

SUMMARY_KEYS = (*tuple(f"unallocated_pct@{p:g}" for p in CHECKPOINTS), "frag_pct_of_capacity@90", "frag_pct_of_idle@90")


def unallocated_curve(result: InflationResult, grid: Sequence[float]) -> list[float | None]:
    """100 - allocated% at the first pod where arrived% reaches each grid point (None past the end)."""
    return [result.unallocated_at(x) for x in grid]


def median_curve(results: Sequence[InflationResult], grid: Sequence[float]) -> list[float | None]:
    """Pointwise median over runs of `unallocated_curve` (None where no run reached the point)."""
    curves = [unallocated_curve(r, grid) for r in results]
    out: list[float | None] = []
    for k in range(len(grid)):
        values = [c[k] for c in curves if c[k] is not None]
        out.append(median(v for v in values if v is not None) if values else None)
    return out


def summary_table(results: Sequence[InflationResult]) -> list[dict[str, object]]:
    """One row per policy (in first-seen order): seeds, and the median of every summary figure."""
    by_policy: dict[str, list[InflationResult]] = {}
    for r in results:
        by_policy.setdefault(r.policy, []).append(r)
    rows: list[dict[str, object]] = []
    for policy, runs in by_policy.items():
        row: dict[str, object] = {"policy": policy, "seeds": sorted(r.seed for r in runs)}
        summaries = [r.summary() for r in runs]
        for key in SUMMARY_KEYS:
            values = [float(v) for s in summaries if isinstance(v := s.get(key), int | float)]
            row[key] = median(values) if values else None
        rows.append(row)
    return rows
