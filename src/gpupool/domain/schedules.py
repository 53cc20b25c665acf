"""Cron schedules of pipelines: fire times in a named timezone, safe across DST changes, and which of the
fires missed while the server was down still run (`catch_up`).

Cron fields are read as wall-clock times of the schedule's timezone (croniter walks the wall clock, this
module turns wall times into instants):

- a wall time that happens twice (the hour repeated when clocks go back) fires once, at its first
  occurrence: a nightly "30 2 * * *" runs once on that night, and an hourly job gets no second run in the
  repeated hour;
- a wall time that does not exist (the hour skipped when clocks go forward) fires once, at the instant of
  the change (02:30 skipped -> fires at 03:00 new time), and never twice with a later time that maps to the
  same instant.

Times are seconds since the epoch; `now` is always passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter  # type: ignore[import-untyped]  # (no type stubs)

# The most missed fires one pass looks back over: a day of minutely fires, 10 days of 15-minute ones,
# years of nightly ones. Older missed fires are summed up in one reason rather than listed one by one.
MAX_MISSED_SCANNED = 1440
# The most a DST change moves the wall clock (one hour almost everywhere; two in a few historical cases).
MAX_DST_SHIFT = timedelta(hours=3)
# A fire is "on time" when the worker sees it within this many seconds (it looks every few seconds); an older
# one was missed (the server was down), which is what `catch_up` is about.
ON_TIME_S = 60.0


def _wall(instant: float, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(instant, tz).replace(tzinfo=None)


def to_instant(wall: datetime, tz: ZoneInfo) -> float:
    """The instant a wall time of `tz` fires: its first occurrence; for a wall time skipped by a DST change,
    the instant of the change."""
    first = wall.replace(tzinfo=tz, fold=0).timestamp()
    if _wall(first, tz) == wall:
        return first
    # skipped: between the two readings of the wall time lies the change; find the first instant whose wall
    # time is at or after `wall` (whole seconds; a DST gap is at most a few hours, so ~14 steps)
    low, high = int(wall.replace(tzinfo=tz, fold=1).timestamp()), int(first)
    low, high = min(low, high), max(low, high)
    while low < high:
        mid = (low + high) // 2
        if _wall(mid, tz) >= wall:
            high = mid
        else:
            low = mid + 1
    return float(low)


def next_fire_after(cron: str, timezone: str, after: float) -> float:
    """The first fire strictly after `after`."""
    tz = ZoneInfo(timezone)
    walls = croniter(cron, _wall(after, tz))
    while True:
        candidate = to_instant(walls.get_next(datetime), tz)
        if candidate > after:
            return candidate


def fires_between(cron: str, timezone: str, first: float, now: float) -> tuple[list[float], bool]:
    """The fires in [first, now] in ascending order: at most MAX_MISSED_SCANNED of the latest, and whether
    older ones were left out. Walks back over wall times from `now`, so the work is bounded however long
    the downtime. Wall times are not in the order of instants around a DST change (02:10 of the repeated
    hour comes after 02:30 of the first), so the walk starts and ends MAX_DST_SHIFT beyond the window."""
    tz = ZoneInfo(timezone)
    walls = croniter(cron, _wall(now, tz).replace(microsecond=0) + MAX_DST_SHIFT)
    stop = _wall(first, tz) - MAX_DST_SHIFT
    found: set[float] = set()
    while len(found) < MAX_MISSED_SCANNED:
        wall = walls.get_prev(datetime)
        if wall < stop:
            return sorted(found), False
        instant = to_instant(wall, tz)
        if first <= instant <= now:
            found.add(instant)  # a set: two skipped wall times may map to one instant
    older = walls.get_prev(datetime)
    return sorted(found), to_instant(older, tz) >= first


@dataclass(frozen=True, slots=True)
class FireDecision:
    """What one due fire does: run (subject to the schedule's concurrency), or is skipped with a reason."""

    at: float
    run: bool
    reason: str


def decide_fires(due: list[float], now: float, catch_up: str, max_catch_up: int, left_out: bool = False) -> \
        list[FireDecision]:
    """Which of the due fires (ascending) run: `none` runs only a fire that is on time (seen within ON_TIME_S),
    `latest` the latest one, `all` the latest `max_catch_up`; the others are skipped, each with its reason."""
    if not due:
        return []
    if catch_up == "none":
        run = {due[-1]} if now - due[-1] <= ON_TIME_S else set()
        why = "missed while the server was not running (catch_up: none)"
    elif catch_up == "latest":
        run = {due[-1]}
        why = f"missed; only the latest missed fire runs (catch_up: latest, {_stamp(due[-1])})"
    else:
        run = set(due[-max_catch_up:])
        why = f"missed, and more than max_catch_up ({max_catch_up}) fires were missed (catch_up: all)"
    out = [FireDecision(at, at in run, "on time" if at in run and now - at <= ON_TIME_S else
                        "caught up after downtime" if at in run else why) for at in due]
    if left_out and out and not out[0].run:
        first = out[0]
        out[0] = FireDecision(first.at, False, first.reason + "; earlier missed fires are not listed")
    return out


def _stamp(instant: float) -> str:
    return datetime.fromtimestamp(instant, ZoneInfo("UTC")).strftime("%Y-%m-%d %H:%M UTC")
