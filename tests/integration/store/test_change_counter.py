"""The store's change sequence on SQLite and PostgreSQL: which writes count, and that a reader who sees the
sequence at S sees every transaction counted at or below S committed, under concurrent writers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError
from tests.support.concurrency import read_while_writing
from tests.support.databases import add_project_user_queue, fresh_database

from gpupool.store import changes
from gpupool.store.db import Database
from gpupool.store.orm import ChangeCounterRow, EventRow, NodeRow, QueueRow, WorkloadRow
from gpupool.store.repos import workloads as workloads_repo


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    def prepared(db: Database) -> Database:
        db.migrate()
        with db.session() as session:
            add_project_user_queue(session, _workload(1000))
        return db

    with fresh_database(request.param, tmp_path) as url:
        db = prepared(Database(url))
        yield db
        db.dispose()


def _workload(workload_id: int) -> WorkloadRow:
    return WorkloadRow(id=workload_id, name="w", kind="job", project_id=1, queue="a", user_id=1, spec={},
                       priority=0, replica_count=1, submitted_at=0.0, updated_at=0.0)


def _node(name: str) -> NodeRow:
    return NodeRow(name=name, cpu_milli=1000, memory_mib=1024, gpus=[], labels={}, taints=[], source="test",
                   registered_at=0.0, heartbeat_at=0.0)


def seq(db: Database) -> int:
    with db.session(write=False) as session:
        value = changes.current(session)
    assert value is not None
    return value


def test_what_the_scheduler_reads_counts_and_the_rest_does_not(database: Database) -> None:
    start = seq(database)
    with database.session() as session:  # its outputs and bookkeeping: not counted
        row = session.get(WorkloadRow, 1000)
        assert row is not None
        row.pending_reason, row.queue_position, row.updated_at = "waiting", 3, 5.0
    with database.session() as session:  # the same value again: no change at all
        row = session.get(WorkloadRow, 1000)
        assert row is not None
        row.priority = 0
    with database.session() as session:  # a table the scheduler does not read
        session.add(EventRow(workload_id=1000, at=1.0, reason="x"))
    with database.session(write=False) as session:  # reading counts for nothing
        session.scalars(select(WorkloadRow)).all()
    assert seq(database) == start
    with database.session() as session:
        row = session.get(WorkloadRow, 1000)
        assert row is not None
        row.priority = 7
    assert seq(database) == start + 1
    with database.session() as session:  # several changes in one transaction: counted once
        session.add(_node("n1"))
        queue = session.get(QueueRow, "a")
        assert queue is not None
        queue.weight = 2.0
    assert seq(database) == start + 2


def test_bulk_statements_and_savepoints(database: Database) -> None:
    start = seq(database)
    with database.session() as session:  # a Core INSERT through the session (as job arrays write tasks)
        session.execute(insert(WorkloadRow.__table__), [  # type: ignore[arg-type]
            {"name": "t", "kind": "job", "project_id": 1, "queue": "a", "user_id": 1, "spec": {}, "priority": 0,
             "replica_count": 1, "submitted_at": 0.0, "updated_at": 0.0, "status": "pending", "attempt": 0,
             "retries_used": 0, "preemptions": 0, "message": ""}])
    assert seq(database) == start + 1
    with database.session() as session:  # a change, then a savepoint that fails: the change still counts
        session.add(_node("n2"))
        session.flush()
        with pytest.raises(IntegrityError), session.begin_nested():
            session.add(_workload(1000))  # the id is taken
            session.flush()
    assert seq(database) == start + 2
    with pytest.raises(RuntimeError), database.session() as session:  # rolled back: nothing to count
        session.add(_node("n3"))
        session.flush()
        raise RuntimeError("abandoned")
    assert seq(database) == start + 2


def test_the_submits_insert_counts_and_a_taken_key_neither_inserts_nor_counts(database: Database) -> None:
    """`repo.insert_workload` runs past the ORM's hooks: it marks the change itself; a key the user already used
    inserts nothing (ON CONFLICT) and changes nothing. A counter that does not exist cannot be marked."""
    values = {"name": "k", "kind": "job", "project_id": 1, "queue": "a", "user_id": 1, "spec": {}, "priority": 0,
              "replica_count": 1, "submitted_at": 0.0, "updated_at": 0.0, "idempotency_key": "key-1"}
    start = seq(database)
    with database.session() as session:
        row = workloads_repo.insert_workload(session, values)
        assert row is not None and session.get(WorkloadRow, row.id) is row  # attached, nothing left to load
        assert workloads_repo.workload_by_key(session, 1, "key-1") is row
    assert seq(database) == start + 1
    with database.session() as session:
        assert workloads_repo.insert_workload(session, values | {"name": "again"}) is None
    assert seq(database) == start + 1
    with database.session(write=False) as session:
        assert session.scalar(select(func.count()).where(WorkloadRow.idempotency_key == "key-1")) == 1
        with pytest.raises(ValueError, match="no change counter 3"):
            changes.mark(session, 3)


def test_a_reader_that_sees_a_sequence_sees_every_change_counted_up_to_it(database: Database) -> None:
    """8 writers each add nodes (one per transaction) and note the sequence their commit was counted at;
    readers repeatedly read the sequence S, then the nodes. Afterwards: every node counted at or below the S
    a reader saw was among the nodes that reader saw (a counter taken before COMMIT would break this)."""
    counted: dict[str, int] = {}
    seen: list[tuple[int, set[str]]] = []
    done = threading.Event()
    lock = threading.Lock()

    def write(k: int) -> None:
        for n in range(15):
            name = f"w{k}-{n}"
            with database.session() as session:
                session.add(_node(name))
            with lock:
                counted[name] = session.info[changes.SEQ_KEY]

    def read() -> None:
        while not done.is_set():
            with database.session(write=False) as session:
                at = changes.current(session)
                names = set(session.scalars(select(NodeRow.name)).all())
            assert at is not None
            seen.append((at, names))

    read_while_writing(read, 2, write, 8, done)
    assert sorted(counted.values()) == list(range(min(counted.values()), min(counted.values()) + 120))
    assert len(seen) > 10
    for at, names in seen:
        assert {name for name, value in counted.items() if value <= at} <= names
    with database.session(write=False) as session:
        assert session.scalar(select(func.count()).select_from(NodeRow)) == 120


def test_a_missing_counter_row_reads_as_unknown_and_start_up_puts_it_back(database: Database) -> None:
    with database.session() as session:
        session.execute(delete(ChangeCounterRow))
    with database.session(write=False) as session:
        assert changes.current(session) is None  # nothing can be concluded: the scheduler reads everything
    with database.session() as session:  # a change still commits (there is nothing to count it in)
        session.add(_node("n9"))
    database.migrate()
    assert seq(database) == 0
    with database.session() as session:
        session.add(_node("n10"))
    assert seq(database) == 1
