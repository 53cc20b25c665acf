"""WorkerProcess: a server worker (the scheduling loop, the reconciler) in a process of its own.

In one process the request threads and every worker share one interpreter, and with many submitters the
server is bound by it (one core busy, the other mostly idle). A worker in a child process runs its passes on
another core. The server starts `python -m <child module>` and talks to it over a socket pair; the child runs
the same step as the thread would, on the same store, in an `IntervalWorker` of its own. A worker's state
lives in the store (and, for the reconciler, in the executor's files), so the child reads and writes it
exactly as the thread did.

Messages (pickled, `multiprocessing.connection` framing):
- server -> child: `("config", config)` first, then `("wake", seq)` (the wakes are numbered; at most one is
  unanswered at a time, the later ones follow as one once it is answered) and `("stop",)`.
- child -> server: `("changed",)` after a step that changed something the server's other workers follow
  (binds and preemptions for the scheduler; a workload's status or freed capacity for the reconciler), and
  `("done", served, steps, failures, cpu_s, report)` after every step: the highest wake number the step
  picked up, the counters, and what the worker reports besides (None when nothing new; the scheduler's
  reservations when they changed, which the server's own loop keeps for dry runs).

The server measures the child's lag from the wakes it sent and the steps that answered them, as the thread's
(`lag_s`, `wait_for_lag_below`). A child that ends (killed, crashed) is started again after RESTART_PAUSE_S,
unless children keep exiting by themselves soon after their start: then the work runs in a thread of the
server from then on (QUICK_ENDS_BEFORE_FALLBACK), as it would without this module. A child whose server is
gone (its socket reaches end of file) exits at once, without finishing its step, so a new server never meets
an old worker still writing: the step's transaction is rolled back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from gpupool.server.workers.loop import IntervalWorker

log = logging.getLogger("gpupool.workers")
# A child that ended is started again after 1 s: long enough not to spin when it fails at start (a store that
# cannot be opened), short against the 1 s within which a submission should be bound or told why
RESTART_PAUSE_S = 1.0
# How long `stop` waits for the child to finish its step and exit before it is killed
STOP_TIMEOUT_S = 30.0
# A child that exits by itself (not killed by a signal) within 10 s of its start three times in a row is not
# started again: the loop runs in a thread of the server (the `fallback` worker) from then on, so that a child
# that cannot start (no process left to the user, a broken installation) never leaves the pool unscheduled.
# 10 s is ten times a start on a loaded 2-CPU machine (about 1 s), and three such ends in a row (3-4 s of
# waiting work) tell a lasting fault from a one-off crash
QUICK_END_S = 10.0
QUICK_ENDS_BEFORE_FALLBACK = 3


class WorkerProcess:
    """A server worker as a child process running `python -m child_module`, with the interface of an
    IntervalWorker (`start`, `wake`, `lag_s`, `wait_for_lag_below`, `stop`, the counters `steps`, `failures`,
    `cpu_s`). `config` is sent to the child first (it has `interval_s`, `min_gap_s` and `log_level`).
    `on_change` is called when the child says a step changed something; `on_report` with what a step reported
    besides its counters, when not None. `fallback` (the same work as a thread of this process) takes over when
    children keep ending soon after their start (QUICK_ENDS_BEFORE_FALLBACK)."""

    def __init__(self, name: str, child_module: str, config: Any, on_change: Callable[[], None],
                 on_report: Callable[[Any], None] = lambda _report: None,
                 fallback: IntervalWorker | None = None) -> None:
        self.name = name
        self.child_module = child_module  # the module the child runs (`python -m`)
        self.config = config
        self.interval_s = config.interval_s
        self.min_gap_s = config.min_gap_s
        self.on_change = on_change
        self.on_report = on_report
        self.restarts = 0  # children started again after one ended
        self.fallback = fallback
        self.in_fallback = False  # the fallback thread runs the loop (no child is started any more)
        self._lock = threading.Condition()
        self._conn: Connection | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._seq = 0
        self._unserved: deque[tuple[int, float]] = deque()  # (wake number, monotonic time sent), oldest first
        self._in_flight: int | None = None  # the number of the wake sent and not yet answered
        self._ended = (0, 0, 0.0)  # the counters of children that ended
        self._last = (0, 0, 0.0)  # the running child's counters, as last reported

    @property
    def steps(self) -> int:
        """Steps completed, by every child so far (and the fallback thread)."""
        with self._lock:
            return self._ended[0] + self._last[0] + (self.fallback.steps if self.fallback else 0)

    @property
    def failures(self) -> int:
        """Steps that ended with an error, by every child so far (and the fallback thread)."""
        with self._lock:
            return self._ended[1] + self._last[1] + (self.fallback.failures if self.fallback else 0)

    @property
    def cpu_s(self) -> float:
        """CPU time of the children's scheduling threads (and the fallback thread) in their steps."""
        with self._lock:
            return self._ended[2] + self._last[2] + (self.fallback.cpu_s if self.fallback else 0.0)

    @property
    def pid(self) -> int | None:
        """The running child's process id (None while none runs)."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def start(self) -> None:
        """Start the child and the thread that reads it (idempotent); the first step runs once it is up."""
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name=f"gpupool-{self.name}-process", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """Ask the child for a step now (numbered, so that its lag can be measured). At most one wake is on
        its way at a time: a wake while one is unanswered is sent once a step has answered that one, so a
        child that hangs never fills the socket (and never blocks the caller)."""
        with self._lock:
            if self.in_fallback and self.fallback is not None:
                self.fallback.wake()
                return
            self._seq += 1
            self._unserved.append((self._seq, time.monotonic()))
            if self._in_flight is None:
                self._send_wake()

    def _send_wake(self) -> None:
        """Send the number of the latest wake (the caller holds the lock)."""
        self._in_flight = self._seq
        self._send(("wake", self._seq))

    def lag_s(self) -> float:
        """How long the oldest wake not yet answered by a finished step has waited (0 when none waits)."""
        with self._lock:
            if self.in_fallback and self.fallback is not None:
                return self.fallback.lag_s()
            return self._lag_locked(time.monotonic())

    def _lag_locked(self, now: float) -> float:
        return now - self._unserved[0][1] if self._unserved else 0.0

    def wait_for_lag_below(self, lag_s: float, timeout_s: float) -> float:
        """Block while the lag is `lag_s` or more, at most `timeout_s`; returns the seconds waited. Returns at
        once while no child runs."""
        if self.in_fallback and self.fallback is not None:
            return self.fallback.wait_for_lag_below(lag_s, timeout_s)
        began = time.monotonic()
        deadline = began + timeout_s
        with self._lock:
            while self._conn is not None and not self._stopping.is_set():
                now = time.monotonic()
                if self._lag_locked(now) < lag_s or now >= deadline:
                    break
                self._lock.wait(deadline - now)
        return time.monotonic() - began

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Ask the child to finish its step and exit (killed after `timeout_s`); no child is started again.
        Idempotent."""
        self._stopping.set()
        with self._lock:
            self._send(("stop",))
            self._lock.notify_all()
        process = self._process
        if process is not None:
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.error("the %s process did not stop within %.0f s; killing it", self.name, timeout_s)
                process.kill()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if self.fallback is not None:
            self.fallback.stop(timeout_s)

    def _send(self, message: tuple[Any, ...]) -> None:
        """Send to the running child, if any (caller holds the lock); a child that is gone is noticed by the
        reading thread."""
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.send(message)

    def _run(self) -> None:
        quick_ends = 0
        while not self._stopping.is_set():
            began = time.monotonic()
            try:
                conn = self._spawn()
                self._read(conn)
            except Exception:
                log.exception("the %s process failed", self.name)
            code = self._reap()
            if self._stopping.is_set():
                break
            by_itself = code is None or code >= 0  # a negative code: killed by a signal (not a fault of its start)
            quick_ends = quick_ends + 1 if by_itself and time.monotonic() - began < QUICK_END_S else 0
            if quick_ends >= QUICK_ENDS_BEFORE_FALLBACK and self.fallback is not None:
                log.error("the %s process ended %d times in a row within %.0f s of its start (last exit code "
                          "%s); the %s runs in the server's process from now on", self.name, quick_ends,
                          QUICK_END_S, code, self.name)
                self._fall_back()
                return
            self.restarts += 1
            log.error("the %s process ended (exit code %s); starting another in %.0f s", self.name, code,
                      RESTART_PAUSE_S)
            self._stopping.wait(RESTART_PAUSE_S)

    def _fall_back(self) -> None:
        """Run the loop in the fallback thread from now on, at once (its first step answers the waiting wakes)."""
        assert self.fallback is not None
        with self._lock:
            self.in_fallback = True
            self._unserved.clear()
            self._lock.notify_all()
        self.fallback.start()

    def _spawn(self) -> Connection:
        """Start a child, send it its configuration and the number of the last wake."""
        ours, theirs = socket.socketpair()
        try:
            # -P: the working directory is not put on the module path (a file there cannot shadow a module)
            process = subprocess.Popen([sys.executable, "-P", "-m", self.child_module, str(theirs.fileno())],
                                       pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                       start_new_session=True)  # the terminal's Ctrl-C reaches the server only
        finally:
            theirs.close()
        conn = Connection(ours.detach())
        log.info("the %s runs in process %d", self.name, process.pid)
        with self._lock:
            self._process, self._conn = process, conn
            self._send(("config", self.config))
            self._send_wake()  # every wake so far, for the child's first steps to answer
            if self._stopping.is_set():  # `stop` came while this child started: it may not have seen it
                self._send(("stop",))
        return conn

    def _read(self, conn: Connection) -> None:
        """Handle the child's messages until it is gone."""
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return
            if message[0] == "changed":
                self.on_change()
            elif message[0] == "done":
                _, served, steps, failures, cpu_s, report = message
                with self._lock:
                    self._last = (steps, failures, cpu_s)
                    while self._unserved and self._unserved[0][0] <= served:
                        self._unserved.popleft()
                    if self._in_flight is not None and served >= self._in_flight:
                        self._in_flight = None
                        if self._unserved:
                            self._send_wake()  # the wakes that came meanwhile
                    self._lock.notify_all()
                if report is not None:
                    self.on_report(report)

    def _reap(self) -> int | None:
        """Forget the child that ended (killing it if it still runs) and keep its counters; its exit code."""
        with self._lock:
            conn, process = self._conn, self._process
            self._conn, self._in_flight = None, None
            self._ended = tuple(a + b for a, b in zip(self._ended, self._last, strict=True))  # type: ignore[assignment]
            self._last = (0, 0, 0.0)
            self._lock.notify_all()
        if conn is not None:
            conn.close()
        if process is None:
            return None
        try:
            return process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()


class ReportingWorker(IntervalWorker):
    """A child's worker: after every step it sends ("done", latest, steps, failures, cpu_s, report()) with the
    highest wake number received before the step began (`latest`, set by `serve_parent`) and what `report`
    returns (None: nothing new)."""

    def __init__(self, name: str, step: Callable[[], object], interval_s: float, min_gap_s: float,
                 send: Callable[[tuple[Any, ...]], None], report: Callable[[], Any] = lambda: None) -> None:
        super().__init__(name, step, interval_s, min_gap_s=min_gap_s)
        self.send = send
        self.report = report
        self.latest = 0  # the highest wake number received

    def run_once(self) -> float | None:
        """One step, then its report."""
        picked = self.latest  # read after the worker cleared its wake: these wakes' changes are visible
        try:
            return super().run_once()
        finally:
            self.send(("done", picked, self.steps, self.failures, self.cpu_s, self.report()))


def child_connection(fd: int) -> tuple[Connection, Any, Callable[[tuple[Any, ...]], None]]:
    """The child's end: its connection, the configuration the parent sent first (logging set up at its
    level), and a thread-safe `send`."""
    conn = Connection(fd)
    _, config = conn.recv()
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    send_lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with send_lock:
            conn.send(message)

    return conn, config, send


def serve_parent(conn: Connection, worker: ReportingWorker) -> None:
    """Start `worker` and follow the parent's messages until it says stop (the worker's step finishes, then
    returns) or is gone (the process exits at once, mid-step: no step of ours may run beside the next
    server's)."""
    worker.start()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            os._exit(0)
        if message[0] == "wake":
            worker.latest = max(worker.latest, message[1])
            worker.wake()
        elif message[0] == "stop":
            break
    worker.stop()
