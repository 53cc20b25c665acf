"""Usage accounting: GPU-hours allocated, busy and allocated-but-idle, per project or user and per day, week
or month (calendar periods in UTC).

- *Allocated* GPU-hours come from the replicas' runs: each GPU share a replica held (milli / 1000 of a card)
  times the time it held it, split exactly at period boundaries.
- *Busy* and *idle* GPU-hours come from the sampler's utilisation points of the cards the replica held: a
  point of mean utilisation u over d seconds adds share x u/100 x d to busy, and share x d to idle when u is
  at or below the idle threshold. A point lasts until the next one, at most `max_gap_s` (a longer gap means
  the sampler was not running: that time is not observed). `observed` is the allocated time the sampler saw;
  allocated minus observed is time with no sample (before the samples kept, or while the server was down).
- The server credits busy / idle as the sampler goes, into a ledger of per-hour counters (`LedgerEntry`,
  `hour_split`), and adds them to the allocated rows with `merge_ledger` instead of passing points to `account`.

Pure: times are passed in, nothing is read from a clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

PERIODS = ("day", "week", "month")
GROUPINGS = ("project", "user")
MAX_GAP_S = 900.0  # the sampler's coarsest kept resolution (15-minute points): a longer gap is unobserved time


@dataclass(frozen=True, slots=True)
class CardShare:
    """A share of one GPU a replica held: node, card index and milli (1000 = the whole card)."""

    node: str
    index: int
    milli: int


@dataclass(frozen=True, slots=True)
class Allocation:
    """One replica run: whose it is and the GPU shares it held from `start` to `end`."""

    project: str
    user: str
    start: float
    end: float
    cards: tuple[CardShare, ...]


@dataclass(frozen=True, slots=True)
class UtilPoint:
    """A sampler point of one card: start time and mean utilisation in percent."""

    t: float
    pct: float


@dataclass(slots=True)
class UsageRow:
    """GPU-hours of one group (a project or a user) in one period starting at `period_start` (UTC)."""

    period_start: float
    group: str
    allocated_gpu_h: float = 0.0
    busy_gpu_h: float = 0.0
    idle_gpu_h: float = 0.0
    observed_gpu_h: float = 0.0
    workloads: set[int] = field(default_factory=set)


def period_start(t: float, period: str) -> float:
    """The start (UTC, epoch seconds) of the day, week (Monday) or month holding `t`."""
    if period not in PERIODS:
        raise ValueError(f"unknown period {period!r}; use one of {', '.join(PERIODS)}")
    day = dt.datetime.fromtimestamp(t, dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "week":
        day -= dt.timedelta(days=day.weekday())
    elif period == "month":
        day = day.replace(day=1)
    return day.timestamp()


def next_period(start: float, period: str) -> float:
    """The start of the period after the one starting at `start`."""
    begin = dt.datetime.fromtimestamp(start, dt.UTC)
    if period == "day":
        return (begin + dt.timedelta(days=1)).timestamp()
    if period == "week":
        return (begin + dt.timedelta(days=7)).timestamp()
    year, month = (begin.year + 1, 1) if begin.month == 12 else (begin.year, begin.month + 1)
    return begin.replace(year=year, month=month).timestamp()


def _split(start: float, end: float, period: str) -> Iterable[tuple[float, float]]:
    """(period start, seconds of [start, end) in that period), in time order."""
    at = start
    while at < end:
        begin = period_start(at, period)
        stop = min(end, next_period(begin, period))
        yield begin, stop - at
        at = stop


def _observed(points: Sequence[UtilPoint], start: float, end: float,
              max_gap_s: float) -> Iterable[tuple[float, float, float]]:
    """(time, seconds, pct) of each point inside [start, end), each lasting to the next point or `max_gap_s`."""
    inside = [p for p in points if start <= p.t < end]
    for i, point in enumerate(inside):
        following = inside[i + 1].t if i + 1 < len(inside) else end
        yield point.t, min(following - point.t, max_gap_s), point.pct


def account(allocations: Iterable[Allocation], utilisation: Mapping[tuple[str, int], Sequence[UtilPoint]],
            workload_ids: Sequence[int] | None = None, *, by: str, period: str, since: float, until: float,
            idle_max_pct: float, max_gap_s: float = MAX_GAP_S) -> list[UsageRow]:
    """GPU-hours per (period, group) inside [since, until], sorted by period then group. `utilisation` maps
    (node, card index) to its points in time order; `workload_ids` (parallel to `allocations`) are counted in
    each row's `workloads`."""
    if by not in GROUPINGS:
        raise ValueError(f"unknown grouping {by!r}; use one of {', '.join(GROUPINGS)}")
    rows: dict[tuple[float, str], UsageRow] = {}

    def row(begin: float, group: str) -> UsageRow:
        key = (begin, group)
        if key not in rows:
            rows[key] = UsageRow(begin, group)
        return rows[key]

    for n, alloc in enumerate(allocations):
        group = alloc.project if by == "project" else alloc.user
        start, end = max(alloc.start, since), min(alloc.end, until)
        if end <= start:
            continue
        share = sum(c.milli for c in alloc.cards) / 1000
        for begin, seconds in _split(start, end, period):
            target = row(begin, group)
            target.allocated_gpu_h += share * seconds / 3600
            if workload_ids is not None:
                target.workloads.add(workload_ids[n])
        for card in alloc.cards:
            for t, seconds, pct in _observed(utilisation.get((card.node, card.index), ()), start, end, max_gap_s):
                target = row(period_start(t, period), group)
                gpu_h = card.milli / 1000 * seconds / 3600
                target.observed_gpu_h += gpu_h
                target.busy_gpu_h += gpu_h * min(max(pct, 0.0), 100.0) / 100
                if pct <= idle_max_pct:
                    target.idle_gpu_h += gpu_h
    return [rows[key] for key in sorted(rows)]


HOUR_S = 3600.0  # the ledger's bucket: fine enough for a day / week / month report, one row per hour and user


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """Busy, idle and observed GPU-seconds of one (project, user) in the hour starting at `hour` (UTC)."""

    hour: float
    project: str
    user: str
    busy_s: float
    idle_s: float
    observed_s: float


def hour_split(start: float, end: float) -> Iterable[tuple[float, float]]:
    """(hour start, seconds of [start, end) in that hour), in time order."""
    at = start
    while at < end:
        hour = at - at % HOUR_S
        stop = min(end, hour + HOUR_S)
        yield hour, stop - at
        at = stop


def merge_ledger(rows: Iterable[UsageRow], entries: Iterable[LedgerEntry], *, by: str,
                 period: str) -> list[UsageRow]:
    """`rows` with the ledger's busy, idle and observed GPU-hours added to the row of each entry's period and
    group (a row is created where none was), sorted by period then group."""
    merged = {(r.period_start, r.group): r for r in rows}
    for entry in entries:
        key = (period_start(entry.hour, period), entry.project if by == "project" else entry.user)
        target = merged.setdefault(key, UsageRow(*key))
        target.busy_gpu_h += entry.busy_s / 3600
        target.idle_gpu_h += entry.idle_s / 3600
        target.observed_gpu_h += entry.observed_s / 3600
    return [merged[key] for key in sorted(merged)]
