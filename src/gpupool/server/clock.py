"""The server's clock: wall time that never jumps.

Durations that decide a workload's fate (max_runtime, the minimum run time before preemption, the start
timeout, stop resends) are differences of the server's `now`. Plain wall time (`time.time`) jumps when NTP
or an administrator steps the clock, and a step forward of an hour would end every job an hour early.
`SteadyClock` reads the wall clock once, at start, and moves on from there with the monotonic clock: it
still reads as wall time (for display, and in the database), but within one server process it never steps.
Across a restart it re-anchors on the wall clock, so a step made while no server ran shifts stored start
times by that step (the only window left; storing monotonic readings would not survive a reboot either).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class SteadyClock:
    """`now()` = the wall time at creation + the monotonic time elapsed since then (see the module)."""

    def __init__(self, wall: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._wall_anchor = wall()
        self._monotonic_anchor = monotonic()

    def __call__(self) -> float:
        return self._wall_anchor + (self._monotonic() - self._monotonic_anchor)
