"""Metrics of a replay: allocation over time, queueing delay, completion time, fairness, preemptions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from gpupool.domain.queues import QueueSpec
from gpupool.sim.engine import ReplayResult


@dataclass(frozen=True, slots=True)
class Distribution:
    """Mean and percentiles of a sample (all None when the sample is empty)."""

    count: int
    mean: float | None
    p50: float | None
    p95: float | None
    p99: float | None

    @staticmethod
    def of(values: Sequence[float]) -> Distribution:
        """Summarise `values` (linear-interpolated percentiles)."""
        if not values:
            return Distribution(0, None, None, None, None)
        array = np.asarray(values, dtype=np.float64)
        p50, p95, p99 = (float(x) for x in np.percentile(array, [50, 95, 99]))
        return Distribution(len(values), float(array.mean()), p50, p95, p99)


def time_weighted_mean(series: Sequence[tuple[float, float]], end: float) -> float:
    """Mean of a step function given as (time, value) points, from the first point to `end`."""
    if not series or end <= series[0][0]:
        return float(series[-1][1]) if series else 0.0
    area = 0.0
    for (t0, v0), (t1, _) in zip(series, [*series[1:], (end, 0.0)], strict=True):
        area += v0 * (max(t1, t0) - t0)
    return area / (end - series[0][0])


def jain_index(values: Sequence[float]) -> float | None:
    """Jain's fairness index (sum x)^2 / (n sum x^2): 1 when all equal, 1/n at worst; None if empty/all 0."""
    squares = sum(v * v for v in values)
    if not values or squares == 0:
        return None
    return sum(values) ** 2 / (len(values) * squares)


def contended_usage(result: ReplayResult) -> tuple[float, dict[str, float], set[str]]:
    """GPU usage integrated over the contended window: the intervals in which at least two queues have work
    waiting (one queue, when only one queue ever waits). Returns the window's length in seconds, each
    queue's GPU milli-seconds in it, and the queues that had work waiting in it."""
    ever = {q for _, queues in result.waiting for q in queues}
    needed = min(2, len(ever)) or 1
    events = sorted([(t, 0, i) for i, (t, _) in enumerate(result.queue_usage)]
                    + [(t, 1, i) for i, (t, _) in enumerate(result.waiting)])
    usage: dict[str, int] = {}
    waiting: frozenset[str] = frozenset()
    length, used = 0.0, dict.fromkeys(sorted(ever), 0.0)
    contending: set[str] = set()
    for (t, kind, i), following in zip(events, [*events[1:], (result.end_time, 0, -1)], strict=True):
        if kind == 0:
            usage = result.queue_usage[i][1]
        else:
            waiting = result.waiting[i][1]
        span = max(following[0], t) - t
        if span <= 0 or len(waiting) < needed:
            continue
        length += span
        contending |= waiting
        for queue, milli in usage.items():
            used[queue] = used.get(queue, 0.0) + milli * span
    return length, used, contending


def queue_shares(result: ReplayResult, queues: Mapping[str, QueueSpec]) -> dict[str, dict[str, float]]:
    """Per queue: `share`, its part of the GPU in use over the contended window (see `contended_usage`;
    a finite trace's tail, when one queue is left, says nothing about fairness); `pool_share`, its
    time-averaged GPU share of the whole pool over the whole replay; `guaranteed`, its guaranteed share of
    the pool (0 when none); `weight`; and `contended` (1.0 when it had work waiting in that window)."""
    length, used, contending = contended_usage(result)
    in_use = sum(used.values())
    names = sorted({q for _, usage in result.queue_usage for q in usage} | set(queues) | set(used))
    capacity = max(result.capacity_gpu_milli, 1)
    shares = {}
    for name in names:
        series = [(t, usage.get(name, 0) / capacity) for t, usage in result.queue_usage]
        guarantee = queues[name].guaranteed.gpu_milli / capacity if name in queues else 0.0
        weight = queues[name].weight if name in queues else 1.0
        shares[name] = {"share": used.get(name, 0.0) / in_use if in_use else 0.0,
                        "pool_share": time_weighted_mean(series, result.end_time), "guaranteed": guarantee,
                        "weight": weight, "contended": 1.0 if name in contending and length > 0 else 0.0}
    return shares


def fairness(shares: Mapping[str, Mapping[str, float]]) -> float | None:
    """Jain's index of each contending queue's share of the GPU in use over its entitlement (its guarantee
    when any of them has one, else its weight); None when no two queues ever waited at once."""
    active = {q: s for q, s in shares.items() if s.get("contended", 1.0) > 0}
    if len(active) < 2:
        return None
    by_guarantee = any(s["guaranteed"] > 0 for s in active.values())
    ratios = [s["share"] / (s["guaranteed"] if by_guarantee else s["weight"])
              for s in active.values() if (s["guaranteed"] if by_guarantee else s["weight"]) > 0]
    return jain_index(ratios)


def summarise(result: ReplayResult, queues: Mapping[str, QueueSpec]) -> dict[str, object]:
    """All replay metrics as one JSON-ready dict."""
    outcomes = list(result.outcomes.values())
    waits = [o.first_start - o.arrival for o in outcomes if o.first_start is not None]
    jcts = [o.end - o.arrival for o in outcomes if o.end is not None]
    capacity = max(result.capacity_gpu_milli, 1)
    allocation = [(t, 100.0 * v / capacity) for t, v in result.allocation]
    shares = queue_shares(result, queues)
    last_arrival = max((o.arrival for o in outcomes), default=0.0)
    window = [(t, v) for t, v in allocation if t <= last_arrival]
    return {
        "workloads": len(outcomes),
        "completed": sum(o.end is not None and o.failed is None for o in outcomes),
        "stopped_at_max_runtime": sum(o.failed is not None for o in outcomes),
        "never_started": sum(o.first_start is None and o.rejected is None for o in outcomes),
        "rejected": sum(o.rejected is not None for o in outcomes),
        "gpu_allocation_pct_mean": time_weighted_mean(allocation, result.end_time),
        "gpu_allocation_pct_mean_while_arriving": time_weighted_mean(window, last_arrival),
        "gpu_allocation_pct_max": max((v for _, v in allocation), default=0.0),
        "queueing_delay_s": _dist(waits),
        "completion_time_s": _dist(jcts),
        "preemptions": result.preemptions,
        "queues": shares,
        "contended_s": contended_usage(result)[0],
        "jain_fairness": fairness(shares),
        "cycles": result.cycles,
        "decisions": result.decisions,
        "decisions_per_s": result.decisions / result.scheduler_seconds if result.scheduler_seconds else None,
        "simulated_seconds": result.end_time,
    }


def _dist(values: Sequence[float]) -> dict[str, float | int | None]:
    d = Distribution.of(values)
    return {"count": d.count, "mean": d.mean, "p50": d.p50, "p95": d.p95, "p99": d.p99}
