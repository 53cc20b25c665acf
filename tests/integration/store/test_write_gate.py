"""SQLite writers of one server process get the write lock in the order they asked for it: a writer waiting
in SQLite's busy handler could be overtaken by later writers again and again (the 50-client submit p99)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from gpupool.store.db import Database
from gpupool.store.write_gate import WriteGate

WAIT_S = 10.0  # generous: the machine running the tests may be loaded


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'gate.db'}")
    with db.session() as session:
        session.execute(text("CREATE TABLE log (n INTEGER)"))
    yield db
    db.dispose()


def _queued(gate_waiters: object, count: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while len(gate_waiters) < count:  # type: ignore[arg-type]
        assert time.monotonic() < deadline, "the writers did not queue"
        time.sleep(0.01)


def test_waiting_writers_get_the_lock_in_arrival_order(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[WriteGate] = []
    original = WriteGate.acquire

    def recording_acquire(self: WriteGate, timeout_s: float) -> bool:
        if self not in seen:
            seen.append(self)
        return original(self, timeout_s)

    monkeypatch.setattr(WriteGate, "acquire", recording_acquire)
    order: list[int] = []
    holding = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with database.session() as session:
            session.execute(text("INSERT INTO log VALUES (0)"))
            holding.set()
            release.wait(WAIT_S)

    def writer(n: int) -> None:
        with database.session() as session:
            session.execute(text("INSERT INTO log VALUES (:n)"), {"n": n})
            order.append(n)

    first = threading.Thread(target=holder)
    first.start()
    assert holding.wait(WAIT_S)
    gate = seen[0]
    threads = []
    for n in range(1, 9):  # each starts only once the one before is queued: a known arrival order
        thread = threading.Thread(target=writer, args=(n,))
        thread.start()
        threads.append(thread)
        _queued(gate._waiters, n)
    release.set()
    for thread in [first, *threads]:
        thread.join(WAIT_S)
    assert order == list(range(1, 9))
    with database.session(write=False) as session:
        assert session.execute(text("SELECT count(*) FROM log")).scalar_one() == 9
    assert not gate._held and not gate._waiters  # every transaction gave it back


def test_a_failed_write_gives_the_gate_back(database: Database) -> None:
    with pytest.raises(Exception, match="no such table"), database.session() as session:
        session.execute(text("INSERT INTO missing VALUES (1)"))
    done = threading.Event()

    def writer() -> None:
        with database.session() as session:
            session.execute(text("INSERT INTO log VALUES (1)"))
        done.set()

    threading.Thread(target=writer).start()
    assert done.wait(WAIT_S), "a rolled-back transaction kept the gate"


def test_the_gate_hands_over_in_order_and_gives_up_after_its_timeout() -> None:
    gate = WriteGate()
    assert gate.acquire(1)
    assert not gate.acquire(0.05)  # held: a waiter gives up after its timeout and leaves the queue
    assert not gate._waiters
    got: list[int] = []

    def waiter(n: int) -> None:
        if gate.acquire(WAIT_S):
            got.append(n)
            gate.release()

    threads = []
    for n in range(5):
        threads.append(threading.Thread(target=waiter, args=(n,)))
        threads[-1].start()
        _queued(gate._waiters, n + 1)
    gate.release()
    for thread in threads:
        thread.join(WAIT_S)
    assert got == list(range(5))
    assert not gate._held
