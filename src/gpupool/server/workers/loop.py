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
        self._wake.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop after the current step; waits at most `timeout_s`. Idempotent."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()  # before the step: a wake during it is seen by the next one
            began = time.monotonic()
            sooner = self.run_once()
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
