"""IntervalWorker: wakes run a step soon; with a minimum gap, a burst of wakes is handled by few steps."""

from __future__ import annotations

import itertools
import threading
import time

from gpupool.server.workers.loop import IntervalWorker


def _burst(worker: IntervalWorker, wakes: int, over_s: float) -> float:
    """Wake `wakes` times over `over_s` seconds; returns when the last wake was sent."""
    sent = 0.0
    for _ in range(wakes):
        time.sleep(over_s / wakes)
        sent = time.monotonic()
        worker.wake()
    return sent


def test_without_a_gap_a_wake_runs_a_step_at_once() -> None:
    ran = threading.Event()
    worker = IntervalWorker("t", ran.set, interval_s=60)
    worker.start()
    try:
        time.sleep(0.2)
        ran.clear()
        worker.wake()
        assert ran.wait(5)
    finally:
        worker.stop()


def test_a_minimum_gap_merges_a_burst_of_wakes_and_still_sees_the_last_one() -> None:
    steps: list[float] = []
    worker = IntervalWorker("t", lambda: steps.append(time.monotonic()), interval_s=60, min_gap_s=0.5)
    worker.start()
    try:
        time.sleep(0.1)  # the first step has run
        last_wake = _burst(worker, wakes=100, over_s=1.0)  # a wake every 10 ms for one second
        deadline = last_wake + 5
        while (not steps or steps[-1] < last_wake) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert steps[-1] >= last_wake  # the last wake was followed by a step
        # about one step per gap (1 s of wakes / 0.5 s), never one per wake
        assert 2 <= len(steps) <= 5
        assert all(b - a >= 0.49 for a, b in itertools.pairwise(steps))
    finally:
        worker.stop()
