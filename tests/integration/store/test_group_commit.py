"""Group commit (store/group_commit.py) on a real SQLite file: works of several threads that wait for the write lock
at once share one transaction; each caller gets its own result or its own error; a refused work fails alone; a
database error runs every work of its group again on its own, so nothing is lost or stored twice."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session
from tests.support.databases import fresh_database

from gpupool.domain.errors import ConflictError, GpupoolError
from gpupool.store import db as db_module
from gpupool.store.db import Database
from gpupool.store.group_commit import GroupCommit

WAIT_S = 10.0  # generous: the machine running the tests may be loaded


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = _database(f"sqlite:///{tmp_path / 'group.db'}")
    yield db
    db.dispose()


def _database(url: str) -> Database:
    db = Database(url)
    with db.session() as session:
        session.execute(text("CREATE TABLE log (n INTEGER UNIQUE)"))
    return db


def _insert(n: int, refuse: bool = False) -> Callable[[Session], int]:
    def work(session: Session) -> int:
        session.execute(text("INSERT INTO log (n) VALUES (:n)"), {"n": n})
        if refuse:
            raise ConflictError(f"{n} refused")
        return n * 10
    return work


def _stored(db: Database) -> list[int]:
    with db.session(write=False) as session:
        return sorted(session.execute(text("SELECT n FROM log")).scalars())


def _transactions(db: Database) -> list[str]:
    begins: list[str] = []
    event.listen(db.engine, "begin", lambda _c: begins.append(threading.current_thread().name))
    return begins


def _run_together(db: Database, group: GroupCommit, works: list[Callable[[Session], Any]],
                  hold_until_failed: bool = False) -> list[Any]:
    """Run each work from a thread of its own while another transaction holds the write lock, so that all of
    them wait at once; the lock is let go once every thread has queued (`hold_until_failed`: once the group has
    been taken from the queue after its BEGIN failed). Returns each caller's result or error."""
    outcomes: list[Any] = [None] * len(works)
    holding, let_go = threading.Event(), threading.Event()

    def hold() -> None:
        with db.session() as session:
            session.execute(text("INSERT INTO log (n) VALUES (-1)"))
            holding.set()
            let_go.wait(WAIT_S)

    def call(i: int) -> None:
        try:
            outcomes[i] = group.run(works[i])
        except Exception as error:
            outcomes[i] = error

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(WAIT_S)
    callers = [threading.Thread(target=call, args=(i,), name=f"caller-{i}") for i in range(len(works))]
    for caller in callers:
        caller.start()
    _wait_for(lambda: len(group._waiting) == len(works), "the callers queued")  # the leader for the lock
    if hold_until_failed:
        _wait_for(lambda: not group._waiting, "the group failed")
    let_go.set()
    for thread in (holder, *callers):
        thread.join(WAIT_S)
    return outcomes


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"not met: {what}"
        time.sleep(0.002)


def test_works_waiting_together_share_one_transaction_and_each_gets_its_result(database: Database) -> None:
    group = GroupCommit(database, isolated=(GpupoolError,))
    begins = _transactions(database)
    outcomes = _run_together(database, group, [_insert(n) for n in range(6)])
    assert outcomes == [0, 10, 20, 30, 40, 50]
    assert _stored(database) == [-1, 0, 1, 2, 3, 4, 5]
    assert len([b for b in begins if b.startswith("caller-")]) == 1, begins  # one transaction for the six
    assert not group._waiting and not group._leading


def test_a_refused_work_fails_alone_and_its_writes_are_rolled_back(database: Database) -> None:
    group = GroupCommit(database, isolated=(GpupoolError,))
    outcomes = _run_together(database, group, [_insert(1), _insert(2, refuse=True), _insert(3)])
    assert outcomes[0] == 10 and outcomes[2] == 30
    assert isinstance(outcomes[1], ConflictError) and outcomes[1].message == "2 refused"
    assert _stored(database) == [-1, 1, 3]


def test_a_database_error_runs_each_work_again_on_its_own(database: Database) -> None:
    """The second work breaks a unique index (not an isolated error): the shared transaction rolls back, every
    work runs again in a transaction of its own; the others are stored once, the faulty one gets its error."""
    group = GroupCommit(database, isolated=(GpupoolError,))
    begins = _transactions(database)
    outcomes = _run_together(database, group, [_insert(1), _insert(1), _insert(2), _insert(3, refuse=True)])
    assert outcomes[0] == 10 and outcomes[2] == 20
    assert isinstance(outcomes[1], IntegrityError)
    assert isinstance(outcomes[3], ConflictError)
    assert _stored(database) == [-1, 1, 2]  # nothing lost, nothing twice, the refused one not at all
    assert len([b for b in begins if b.startswith("caller-")]) == 1 + 4  # the group, then each alone


def test_a_lock_wait_that_runs_out_fails_every_waiting_work_without_running_it_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BEGIN fails when SQLite's lock wait runs out (1 s here, while another transaction holds the lock): each
    caller of the group gets that error, as its own transaction would have given it. The lock is let go as soon
    as the group has failed: a work run again then would be stored."""
    monkeypatch.setattr(db_module, "SQLITE_BUSY_TIMEOUT_MS", 1000)
    db = _database(f"sqlite:///{tmp_path / 'busy.db'}")
    try:
        outcomes = _run_together(db, GroupCommit(db, isolated=(GpupoolError,)), [_insert(n) for n in range(3)],
                                 hold_until_failed=True)
        assert all(isinstance(o, OperationalError) and "locked" in str(o) for o in outcomes), outcomes
        assert _stored(db) == [-1]
    finally:
        db.dispose()


def test_a_group_holds_at_most_max_works_and_the_next_leader_runs_the_rest(database: Database) -> None:
    group = GroupCommit(database, isolated=(GpupoolError,), max_works=2)
    begins = _transactions(database)
    outcomes = _run_together(database, group, [_insert(n) for n in range(5)])
    assert outcomes == [0, 10, 20, 30, 40]
    assert _stored(database) == [-1, 0, 1, 2, 3, 4]
    assert len([b for b in begins if b.startswith("caller-")]) == 3  # 2 + 2 + 1


def test_a_work_alone_runs_without_a_savepoint_and_a_refusal_rolls_it_back(database: Database) -> None:
    group = GroupCommit(database, isolated=(GpupoolError,))
    statements: list[str] = []
    event.listen(database.engine, "before_cursor_execute", lambda _c, _cu, s, *_: statements.append(s))
    assert group.run(_insert(7)) == 70
    with pytest.raises(ConflictError):
        group.run(_insert(8, refuse=True))
    assert _stored(database) == [7]
    assert not [s for s in statements if "SAVEPOINT" in s.upper()]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_many_threads_store_every_work_once_on_both_stores(kind: str, tmp_path: Path) -> None:
    """As the server uses it: grouped on SQLite, each work in its own transaction on PostgreSQL."""
    with fresh_database(kind, tmp_path) as url:
        db = _database(url)
        try:
            group = GroupCommit(db, isolated=(GpupoolError,), grouped=db.is_sqlite)
            results: dict[int, Any] = {}

            def submit_many(first: int) -> None:
                for n in range(first, first + 20):
                    results[n] = group.run(_insert(n)) if n % 7 else _refusal(group, n)

            threads = [threading.Thread(target=submit_many, args=(i * 20,)) for i in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(WAIT_S * 3)
            assert all(results[n] == (None if n % 7 == 0 else n * 10) for n in range(160))
            assert _stored(db) == [n for n in range(160) if n % 7]
        finally:
            db.dispose()


def _refusal(group: GroupCommit, n: int) -> None:
    with pytest.raises(ConflictError):
        group.run(_insert(n, refuse=True))
