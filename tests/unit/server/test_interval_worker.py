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


def test_the_lag_counts_from_the_oldest_wake_until_a_step_that_picked_it_up_ends() -> None:
    """A caller that waits for the lag to fall is released when the step handling the wake ends, not before,
    and never later than its timeout; without a running thread it does not wait."""
    release = threading.Event()
    started = threading.Event()

    def slow_step() -> None:
        started.set()
        release.wait(10)

    idle = IntervalWorker("idle", slow_step, interval_s=60)
    idle.wake()
    assert idle.wait_for_lag_below(0.05, timeout_s=5) < 0.05  # not started: nobody to wait for
    worker = IntervalWorker("t", slow_step, interval_s=60)
    worker.start()
    try:
        assert started.wait(5)  # the first step runs (and blocks) without any wake
        release.set()
        time.sleep(0.1)
        release.clear()
        started.clear()
        assert worker.lag_s() == 0.0
        worker.wake()
        assert started.wait(5)  # the wake is picked up by a step that blocks
        time.sleep(0.2)
        assert worker.lag_s() >= 0.2
        assert 0.25 <= worker.wait_for_lag_below(0.1, timeout_s=0.3) < 2  # still behind: the timeout ends it
        ended_at: list[float] = []
        waiter = threading.Thread(target=lambda: ended_at.append(
            worker.wait_for_lag_below(0.1, timeout_s=10) and time.monotonic()))
        waiter.start()
        time.sleep(0.3)
        assert not ended_at  # the step still runs
        released = time.monotonic()
        release.set()
        waiter.join(5)
        assert ended_at and released <= ended_at[0] < released + 5
        assert worker.lag_s() == 0.0
    finally:
        release.set()
        worker.stop()
