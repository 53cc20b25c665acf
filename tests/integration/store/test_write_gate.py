"""SQLite writers of one server process get the write lock in the order they asked for it: a writer waiting
in SQLite's busy handler could be overtaken by later writers again and again (the 50-client submit p99).
Between processes (a server and its scheduler process), the gates also take a file lock beside the database
while they write, given up after the lock wait."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from gpupool.store import db as db_module
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


def _other_process_lock(tmp_path: Path) -> subprocess.Popen[str]:
    """Another process holding the database's write-lock file (as another server process's gate does) until
    its stdin closes; returns once it holds it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
                               "print('held', flush=True); sys.stdin.read()", str(tmp_path / "gate.db.write-lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_writer_waits_while_another_process_holds_the_write_lock_file(database: Database, tmp_path: Path) -> None:
    holder = _other_process_lock(tmp_path)
    written = threading.Event()

    def writer() -> None:
        with database.session() as session:
            session.execute(text("INSERT INTO log VALUES (1)"))
        written.set()

    thread = threading.Thread(target=writer)
    try:
        thread.start()
        assert not written.wait(0.3)  # SQLite's own lock is free: only the other process's file lock holds it
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(WAIT_S)
    assert written.wait(WAIT_S)
    thread.join(WAIT_S)
    # and this process's writers hold the file lock while they write: another process cannot take it then
    with database.session() as session:
        session.execute(text("INSERT INTO log VALUES (2)"))
        probe = subprocess.run([sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a'); "
                                "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)", str(tmp_path / "gate.db.write-lock")],
                               capture_output=True, text=True, check=False)
        assert probe.returncode != 0 and "BlockingIOError" in probe.stderr


def test_a_write_lock_file_held_past_the_wait_leaves_the_decision_to_sqlite(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db_module, "SQLITE_BUSY_TIMEOUT_MS", 200)
    db = Database(f"sqlite:///{tmp_path / 'gate.db'}")
    holder = _other_process_lock(tmp_path)
    try:
        with db.session() as session:  # the file lock stays taken; SQLite's lock is free: the write goes through
            session.execute(text("CREATE TABLE log (n INTEGER)"))
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(WAIT_S)
        db.dispose()
