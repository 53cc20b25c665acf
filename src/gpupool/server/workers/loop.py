"""IntervalWorker: runs one step function on an interval in a thread of its own, or sooner when woken.

A step that raises is logged and the loop goes on (the next step starts from the database again), so a
worker is safe to restart at any point: all its state lives in the store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("gpupool.workers")


class IntervalWorker:
    """Calls `step` every `interval_s` seconds, and right away after `wake()`. A step that returns a number
    asks for the next step sooner, after that many seconds (e.g. while replicas are starting). With
    `min_gap_s`, a step starts no sooner than that after the previous one started: the wakes of a burst
    (many submissions at once) are handled by one step rather than one each. Start with `start()`, end with
    `stop()` (which waits for the current step to finish)."""

    def __init__(self, name: str, step: Callable[[], object], interval_s: float, min_gap_s: float = 0.0) -> None:
        self.name = name
        self.step = step
        self.interval_s = interval_s
        self.min_gap_s = min_gap_s
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lag = threading.Condition()
        self._woken_at: float | None = None  # monotonic time of the oldest wake no step has picked up yet
        self._serving_since: float | None = None  # that time for the wakes the running step picked up
        self.steps = 0
        self.failures = 0
        self.cpu_s = 0.0  # CPU time of this worker's thread in its steps, failed ones included

    def start(self) -> None:
        """Start the thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"gpupool-{self.name}", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """Run the next step now rather than at the end of the interval."""
        with self._lag:
            if self._woken_at is None:
                self._woken_at = time.monotonic()
        self._wake.set()

    def lag_s(self) -> float:
        """How long the oldest wake not yet handled by a finished step has waited (0 when none waits)."""
        with self._lag:
            return self._lag_locked(time.monotonic())

    def wait_for_lag_below(self, lag_s: float, timeout_s: float) -> float:
        """Block while the worker's lag (`lag_s()`) is `lag_s` or more, at most `timeout_s`, e.g. to let it
        catch up before adding more work; returns the seconds waited. Returns at once when the thread is not
        running."""
        began = time.monotonic()
        deadline = began + timeout_s
        with self._lag:
            while self._thread is not None and self._thread.is_alive() and not self._stopping.is_set():
                now = time.monotonic()
                if self._lag_locked(now) < lag_s or now >= deadline:
                    break
                self._lag.wait(deadline - now)
        return time.monotonic() - began

    def _lag_locked(self, now: float) -> float:
        waiting = [t for t in (self._woken_at, self._serving_since) if t is not None]
        return now - min(waiting) if waiting else 0.0

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop after the current step; waits at most `timeout_s`. Idempotent."""
        self._stopping.set()
        self._wake.set()
        with self._lag:
            self._lag.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        while not self._stopping.is_set():
            with self._lag:  # the step picks up every wake so far
                self._wake.clear()  # before the step: a wake during it is seen by the next one
                self._serving_since, self._woken_at = self._woken_at, None
            began = time.monotonic()
            try:
                sooner = self.run_once()
            finally:
                with self._lag:
                    self._serving_since = None
                    self._lag.notify_all()
            self._wake.wait(min(self.interval_s, sooner) if sooner is not None else self.interval_s)
            rest = began + self.min_gap_s - time.monotonic()
            if rest > 0:
                self._stopping.wait(rest)

    def run_once(self) -> float | None:
        """One step, with failures logged rather than raised; returns the delay the step asked for, if any. The
        CPU time of the step (this thread's) is added to `cpu_s`."""
        began = time.thread_time()
        try:
            result = self.step()
            self.steps += 1
        except Exception:
            self.failures += 1
            log.exception("%s: step failed; retrying on the next interval", self.name)
            return None
        finally:
            self.cpu_s += time.thread_time() - began
        return float(result) if isinstance(result, int | float) and not isinstance(result, bool) else None
