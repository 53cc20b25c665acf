"""A first-come, first-served gate for SQLite's single writer, inside one server process.

SQLite lets one write transaction run at a time. A writer that finds the lock taken waits in SQLite's busy
handler, which sleeps and tries again (1, 2, 5, 10 ... up to 100 ms between tries) with no order among the
waiters: whoever happens to try just after a commit wins. Under 50 concurrent submitters most writes got
the lock quickly and a few lost the race dozens of times in a row (submit p50 0.46 s, p99 4.7 s, max 9.7 s).

The gate queues the writers of one process in the order they arrive and hands the lock over on commit or
rollback, so a writer never sleeps in the busy handler while another writer of this process runs: it is
woken as soon as the lock is free, and no writer is overtaken.

Between processes (a server and its scheduler process, server/workers/scheduler_process.py), a gate made
with `lock_path` also holds an exclusive `flock` on that file (beside the database) from before BEGIN
IMMEDIATE to after COMMIT or ROLLBACK, so a writer of another process tries again at most 1 ms apart
instead of sleeping in SQLite's busy handler (up to 100 ms a try) while this process's writers take turns.
Writers that take no gate (a migration) still meet SQLite's own lock and busy timeout, which keep
correctness; the gates only order.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

# A writer that finds another process's gate holding the file lock tries again after 0.1 ms, then twice as long
# each time up to 1 ms: a submit's write transaction takes about 1 ms here and a scheduling pass's binds a few
# to tens, so a waiter starts at most 1 ms after the lock is free, where SQLite's busy handler sleeps up to
# 100 ms between tries; a try costs a system call (microseconds)
LOCK_RETRY_FIRST_S = 0.0001
LOCK_RETRY_MAX_S = 0.001


class WriteGate:
    """A lock handed to its waiters in the order they asked for it (threading.Lock is not: a releasing
    thread may take it again at once, past every waiter)."""

    def __init__(self, lock_path: Path | None = None) -> None:
        self._mutex = threading.Lock()
        self._waiters: deque[threading.Lock] = deque()
        self._held = False
        self._lock_path = lock_path
        self._lock_fd: int | None = None  # opened on first use, kept open
        self._locked_across = False  # the holder holds the file lock

    def acquire(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the gate, behind everyone who asked before; True when taken. With a
        `lock_path`, the holder then also takes the file lock that the other processes' gates take, trying
        again at most LOCK_RETRY_MAX_S apart until `timeout_s` has passed (then SQLite's own busy wait
        decides, as for a writer without a gate)."""
        deadline = time.monotonic() + timeout_s
        if not self._take_turn(timeout_s):
            return False
        if self._lock_path is not None:
            try:
                self._lock_across(deadline)
            except BaseException:
                self._hand_over()
                raise
        return True

    def _lock_across(self, deadline: float) -> None:
        """Take the file lock (the gate is held), or give up at `deadline`."""
        if self._lock_fd is None:
            assert self._lock_path is not None
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        pause = LOCK_RETRY_FIRST_S
        while True:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._locked_across = True
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return
            time.sleep(pause)
            pause = min(2 * pause, LOCK_RETRY_MAX_S)

    def _take_turn(self, timeout_s: float) -> bool:
        with self._mutex:
            if not self._held:
                self._held = True
                return True
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        if turn.acquire(timeout=timeout_s):
            return True  # handed over by release(): the gate stayed held on our behalf
        with self._mutex:
            if turn in self._waiters:
                self._waiters.remove(turn)
                return False
        return True  # handed over just as the wait ran out

    def release(self) -> None:
        """Release the file lock (with a `lock_path`), then hand the gate to the longest waiter, or leave it
        free when nobody waits."""
        if self._locked_across:
            self._locked_across = False
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)  # type: ignore[arg-type]  # set when locked
        self._hand_over()

    def _hand_over(self) -> None:
        with self._mutex:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._held = False


def gated_connection_class(gate: WriteGate) -> type[sqlite3.Connection]:
    """A sqlite3.Connection class (for `sqlite3.connect(factory=...)`) that gives `gate` back once its
    transaction ends: after COMMIT or ROLLBACK has run, or when the connection closes. The gate is taken
    by `take_gate` just before BEGIN IMMEDIATE."""

    class GatedConnection(sqlite3.Connection):
        holds_gate = False

        def commit(self) -> None:
            try:
                super().commit()
            finally:
                self.give_gate_back()

        def rollback(self) -> None:
            try:
                super().rollback()
            finally:
                self.give_gate_back()

        def close(self) -> None:
            try:
                super().close()
            finally:
                self.give_gate_back()

        def take_gate(self, timeout_s: float) -> None:
            """Queue for the gate (at most `timeout_s`; past that, SQLite's own busy wait decides)."""
            if not self.holds_gate:
                self.holds_gate = gate.acquire(timeout_s)

        def give_gate_back(self) -> None:
            if self.holds_gate:
                self.holds_gate = False
                gate.release()

    return GatedConnection


def take_gate(dbapi_connection: Any, timeout_s: float) -> None:
    """Before BEGIN IMMEDIATE on `dbapi_connection`: wait for its gate when it has one."""
    take = getattr(dbapi_connection, "take_gate", None)
    if take is not None:
        take(timeout_s)


def give_gate_back(dbapi_connection: Any) -> None:
    """After a BEGIN that failed: give the gate back at once (there is no transaction to end)."""
    give = getattr(dbapi_connection, "give_gate_back", None)
    if give is not None:
        give()
