"""Group commit: the short write transactions that threads of one process ask for at the same time run as one.

A submission's write transaction is short (a few statements), but each one pays for its transaction: on SQLite
the wait for the one write lock (the server's gate, the lock file shared with the worker processes), BEGIN
IMMEDIATE, the change counters' read and increment, COMMIT, and the hand-over to the next writer (a thread
switch under the interpreter's lock). Under load several submissions wait for the lock at once; `GroupCommit`
lets the first of them (the leader) take the lock once, run every work waiting by then (up to `max_works`) in
that transaction, each in a savepoint of its own, commit once, and hand each caller its own result. Where
transactions run side by side (PostgreSQL), grouping makes the works' statements wait for one another:
`grouped=False` runs each work in a transaction of its own instead.

What each caller sees is what a transaction of its own would have given:
- a work that raises one of the `isolated` errors (the store's callers' refusals: a bad spec, a conflict) has
  its savepoint rolled back and gets its error; the others go on and commit;
- any other error (the database's) of a work rolls the shared transaction back, and every work of the group
  runs again, each in a transaction of its own, so that one work's trouble never fails another; an error of
  the transaction itself (its BEGIN: the lock wait ran out; its COMMIT) is every work's error, as it would have
  been for each of them alone;
- a result is returned only once the transaction that wrote it has committed: a crash before that loses the
  whole group, and no caller was told it was stored.
Works run in the order they arrived, one after another in the leader's thread, and must have no effect
outside the database (they may run twice, as above). A caller that arrives while a group runs waits for the
next group, which its first work's thread leads. A work that finds no other waiting runs alone, exactly as
in a `Database.session` of its own (no savepoint).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from sqlalchemy.orm import Session

from gpupool.store.db import Database

T = TypeVar("T")
# At most this many works share a transaction: SQLite's write lock is held for all of them (a submission's
# statements take about 0.3-1 ms on the benchmark machine, so 32 hold it for 10-30 ms, about one scheduling
# pass's binds); with 8 clients a group is rarely above 8, so the cap only bounds what a burst holds
MAX_WORKS = 32


class _RefusedError(Exception):
    """A work that ran alone was refused: raised to roll its transaction back."""


class _Pending(Generic[T]):
    """One caller's work, and what became of it."""

    __slots__ = ("done", "ended", "error", "leads", "result", "work")

    def __init__(self, work: Callable[[Session], T]) -> None:
        self.work = work
        self.done = threading.Event()  # set when it has ended, or when its thread is to lead the next group
        self.leads = False
        self.ended = False
        self.result: T | None = None
        self.error: BaseException | None = None

    def end(self, result: T | None, error: BaseException | None) -> None:
        self.result, self.error, self.ended = result, error, True

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]  # a work's own result


class GroupCommit:
    """See the module docstring. `isolated`: the errors that fail one work without failing its group."""

    def __init__(self, db: Database, isolated: tuple[type[BaseException], ...], max_works: int = MAX_WORKS,
                 grouped: bool = True) -> None:
        self._db = db
        self._grouped = grouped
        self._isolated = isolated
        self._max_works = max_works
        self._mutex = threading.Lock()
        self._waiting: deque[_Pending[Any]] = deque()
        self._leading = False  # a group is being formed or run; the next leader is named when it ends
        self.transactions = 0  # shared transactions begun (each work alone counts one); for /metrics
        self.works = 0  # works those transactions ran (works run again alone after a failed group not counted)

    def run(self, work: Callable[[Session], T]) -> T:
        """Run `work(session)` in a write transaction, shared with the works of other threads that wait at the
        same time; returns its result once that transaction has committed, or raises its error. Made with
        `grouped=False`, every work runs in a transaction of its own, concurrently with the others."""
        if not self._grouped:
            with self._mutex:
                self.transactions, self.works = self.transactions + 1, self.works + 1
            with self._db.session() as session:
                return work(session)
        mine: _Pending[T] = _Pending(work)
        with self._mutex:
            self._waiting.append(mine)
            mine.leads = not self._leading
            self._leading = True
        if not mine.leads:
            mine.done.wait()
        if mine.leads:  # the head of the queue: this thread runs the next group, this work first
            self._lead()
        return mine.outcome()

    def _lead(self) -> None:
        """Run one group, then name the next leader, then wake the group's callers."""
        group: list[_Pending[Any]] = []
        running_works = False
        try:
            with self._db.session() as session:
                session.connection()  # BEGIN (IMMEDIATE on SQLite): the works that arrive meanwhile join
                group = self._take_group()
                self.transactions, self.works = self.transactions + 1, self.works + len(group)  # one leader at once
                running_works = True
                if len(group) == 1:
                    self._run_whole(session, group[0])
                for pending in group if len(group) > 1 else ():
                    self._run_in_savepoint(session, pending)
                running_works = False
        except _RefusedError:
            pass  # a work alone was refused: its transaction rolled back, its caller gets the error
        except Exception as error:  # the database's (the isolated errors stay inside their savepoints)
            group = group or self._take_group()
            if running_works and len(group) > 1:
                self._run_alone(group)  # one work's statement failed: the others must not fail with it
            else:  # BEGIN or COMMIT failed (a lock wait ran out, the disk): as each transaction alone would
                for pending in group:
                    pending.end(None, error)
        finally:
            self._hand_over(group or self._take_group())

    def _take_group(self) -> list[_Pending[Any]]:
        with self._mutex:
            return [self._waiting.popleft() for _ in range(min(len(self._waiting), self._max_works))]

    def _run_whole(self, session: Session, pending: _Pending[Any]) -> None:
        """A work alone in its transaction (no savepoint): refused, it rolls the transaction back."""
        try:
            pending.end(pending.work(session), None)
        except self._isolated as error:
            pending.end(None, error)
            raise _RefusedError from error

    def _run_in_savepoint(self, session: Session, pending: _Pending[Any]) -> None:
        try:
            with session.begin_nested():
                pending.end(pending.work(session), None)
        except self._isolated as error:
            pending.end(None, error)

    def _run_alone(self, group: list[_Pending[Any]]) -> None:
        """After the shared transaction failed: every work of the group, each in a transaction of its own (a
        refusal too: it may have been decided on a work whose writes were rolled back)."""
        for pending in group:
            try:
                with self._db.session() as session:
                    pending.end(pending.work(session), None)
            except Exception as error:  # handed to its caller
                pending.end(None, error)

    def _hand_over(self, group: list[_Pending[Any]]) -> None:
        for pending in group:
            pending.leads = False
            if not pending.ended:  # the leader was interrupted (not by an Exception) before this work ended
                pending.end(None, RuntimeError("the transaction was interrupted; submit again"))
        with self._mutex:
            if self._waiting:
                following = self._waiting[0]
                following.leads = True
                following.done.set()
            else:
                self._leading = False
        for pending in group:
            pending.done.set()
