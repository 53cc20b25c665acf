"""Bounded, downsampled time series: ring buffers at several resolutions, in memory.

Each series keeps the raw samples of the last while and averages (with the maximum) over longer steps for
longer; the defaults hold 1 hour of raw 5-second samples, 24 hours of 1-minute points and 30 days of
15-minute points, about 5,000 points per series whatever the uptime. Time is passed in.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Resolution:
    """Keep `keep` points, each the aggregate of `step_s` seconds (0: every sample as it came)."""

    step_s: float
    keep: int


DEFAULT_RESOLUTIONS = (Resolution(0, 720), Resolution(60, 1440), Resolution(900, 2880))


@dataclass(frozen=True, slots=True)
class Point:
    """One point: the start of its interval (or the sample time), the mean and the maximum in it."""

    t: float
    mean: float
    max: float


class _Ring:
    def __init__(self, resolution: Resolution) -> None:
        self.step = resolution.step_s
        self.points: deque[Point] = deque(maxlen=resolution.keep)
        self.bucket: float | None = None
        self.total, self.count, self.peak = 0.0, 0, -math.inf

    def add(self, t: float, value: float) -> None:
        if self.step <= 0:
            self.points.append(Point(t, value, value))
            return
        bucket = math.floor(t / self.step) * self.step
        if self.bucket is not None and bucket < self.bucket:
            return  # late sample for an interval already closed
        if self.bucket is not None and bucket > self.bucket:
            self.points.append(self._open_point())
            self.total, self.count, self.peak = 0.0, 0, -math.inf
        self.bucket = bucket
        self.total += value
        self.count += 1
        self.peak = max(self.peak, value)

    def _open_point(self) -> Point:
        return Point(self.bucket or 0.0, self.total / self.count, self.peak)

    def all(self) -> list[Point]:
        pending = [self._open_point()] if self.step > 0 and self.count else []
        return [*self.points, *pending]

    def covers(self, since: float) -> bool:
        """True when this ring still holds everything from `since` on (it never dropped a newer point)."""
        full = self.points.maxlen is not None and len(self.points) == self.points.maxlen
        return not full or (bool(self.points) and self.points[0].t <= since)


class Series:
    """One metric over time at several resolutions."""

    def __init__(self, resolutions: tuple[Resolution, ...] = DEFAULT_RESOLUTIONS) -> None:
        self._rings = [_Ring(r) for r in sorted(resolutions, key=lambda r: r.step_s)]
        self.last: Point | None = None

    def add(self, t: float, value: float) -> None:
        """Record `value` at time `t` (samples are expected in time order)."""
        for ring in self._rings:
            ring.add(t, value)
        self.last = Point(t, value, value)

    def points(self, since: float, until: float = math.inf, max_points: int | None = None) -> list[Point]:
        """Points in [since, until], from the finest resolution that still covers `since`; merged down to
        at most `max_points` (means averaged, maxima kept) when given."""
        ring = next((r for r in self._rings if r.covers(since)), self._rings[-1])
        found = [p for p in ring.all() if since <= p.t <= until]
        if max_points is None or len(found) <= max_points or max_points < 1:
            return found
        size = math.ceil(len(found) / max_points)
        merged = []
        for start in range(0, len(found), size):
            chunk = found[start:start + size]
            merged.append(Point(chunk[0].t, sum(p.mean for p in chunk) / len(chunk), max(p.max for p in chunk)))
        return merged


class SeriesStore:
    """Series by key (a tuple such as ("gpu", "node1", "0", "utilization")), created on first use."""

    def __init__(self, resolutions: tuple[Resolution, ...] = DEFAULT_RESOLUTIONS) -> None:
        self.resolutions = resolutions
        self._series: dict[Hashable, Series] = {}

    def add(self, key: Hashable, t: float, value: float) -> None:
        """Record a value of series `key`."""
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = Series(self.resolutions)
        series.add(t, value)

    def get(self, key: Hashable) -> Series | None:
        """The series `key`, or None when it never had a value."""
        return self._series.get(key)

    def query(self, key: Hashable, since: float, until: float = math.inf, max_points: int | None = None) -> list[Point]:
        """Series.points of `key` ([] for an unknown key)."""
        series = self._series.get(key)
        return series.points(since, until, max_points) if series else []

    def keys(self) -> list[Hashable]:
        """Every key, in insertion order."""
        return list(self._series)

    def drop_stale(self, now: float, older_than_s: float, keep: Iterable[Hashable] = ()) -> int:
        """Forget series whose last value is older than `older_than_s` (ended workloads), except `keep`;
        returns how many were dropped."""
        kept = set(keep)
        stale = [k for k, s in self._series.items()
                 if k not in kept and s.last is not None and now - s.last.t > older_than_s]
        for key in stale:
            del self._series[key]
        return len(stale)
