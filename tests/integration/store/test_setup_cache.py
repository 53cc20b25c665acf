"""The setup sequence and the values kept while it is unchanged (store/setup_cache.py), on SQLite and PostgreSQL:
which writes count, that a kept value is never older than the transaction that reads it, and that a transaction
reads its own writes."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete, update
from tests.support.concurrency import read_while_writing
from tests.support.databases import seeded_database

from gpupool.store import changes, setup_cache
from gpupool.store.db import Database
from gpupool.store.orm import (
    ChangeCounterRow,
    MembershipRow,
    NodeRow,
    ProjectRow,
    QueueRow,
    TokenRow,
    UserRow,
    WorkloadRow,
)
from gpupool.store.repos import accounts, queues
from gpupool.store.setup_cache import cached


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with seeded_database(request.param, tmp_path,
                         TokenRow(id=1, user_id=1, name="t", token_hash="h" * 64, prefix="p", created_at=0.0),
                         NodeRow(name="n", cpu_milli=1000, memory_mib=1024, gpus=[], labels={}, taints=[],
                                 source="test", registered_at=0.0, heartbeat_at=0.0)) as db:
        yield db


def setup_seq(db: Database) -> int:
    with db.session(write=False) as session:
        value = changes.current(session, changes.SETUP_COUNTER_ID)
    assert value is not None
    return value


def test_accounts_projects_queues_and_node_capacity_count_and_the_rest_does_not(database: Database) -> None:
    start = setup_seq(database)
    with database.session() as session:  # a token's last use, a node's heartbeat, a workload: not counted
        token = session.get(TokenRow, 1)
        node = session.get(NodeRow, "n")
        assert token is not None and node is not None
        token.last_used_at, node.heartbeat_at = 5.0, 5.0
        session.add(WorkloadRow(name="w", kind="job", project_id=1, queue="a", user_id=1, spec={}, priority=0,
                                replica_count=1, submitted_at=0.0, updated_at=0.0))
    assert setup_seq(database) == start
    changes_that_count = [
        lambda s: setattr(s.get(TokenRow, 1), "revoked_at", 9.0),
        lambda s: s.add(MembershipRow(user_id=1, project_id=1, role="admin")),
        lambda s: setattr(s.get(UserRow, 1), "is_admin", True),
        lambda s: s.add(ProjectRow(id=2, name="b", created_at=0.0)),
        lambda s: setattr(s.get(QueueRow, "a"), "weight", 3.0),
        lambda s: setattr(s.get(NodeRow, "n"), "schedulable", False),
        lambda s: s.execute(update(MembershipRow).values(role="viewer")),  # a bulk statement counts too
    ]
    for k, change in enumerate(changes_that_count, start=1):
        with database.session() as session:
            change(session)
        assert setup_seq(database) == start + k


def test_a_kept_value_is_answered_until_the_sequence_moves(database: Database) -> None:
    reads: list[int] = []

    def read(session: object) -> tuple[str, ...]:
        reads.append(1)
        with database.session(write=False) as inner:
            return tuple(sorted(accounts.project_names(inner).values()))

    for _ in range(3):
        with database.session(write=False) as session:
            assert cached(session, "names", read) == ("a",)
    assert len(reads) == 1
    with database.session() as session:
        session.add(ProjectRow(id=2, name="b", created_at=0.0))
    with database.session(write=False) as session:
        assert cached(session, "names", read) == ("a", "b")
    assert len(reads) == 2


def test_a_transaction_that_wrote_reads_for_itself(database: Database) -> None:
    with database.session(write=False) as session:
        assert dict(accounts.project_names_kept(session)) == {1: "a"}  # kept
    with database.session() as session:
        session.add(ProjectRow(id=2, name="b", created_at=0.0))  # not flushed yet: still its own write
        assert dict(accounts.project_names_kept(session)) == {1: "a", 2: "b"}
        session.add(QueueRow(name="b", project_id=2, updated_at=0.0))
        session.flush()
        queue = queues.project_queue(session, 2)
        assert queue is not None and queue.name == "b"


def test_without_the_counter_row_nothing_is_kept(database: Database) -> None:
    with database.session() as session:
        session.execute(delete(ChangeCounterRow).where(ChangeCounterRow.id == changes.SETUP_COUNTER_ID))
    with database.session(write=False) as session:
        assert dict(accounts.project_names_kept(session)) == {1: "a"}
    with database.session() as session:  # a change nothing counts
        session.add(ProjectRow(id=2, name="b", created_at=0.0))
    with database.session(write=False) as session:
        assert dict(accounts.project_names_kept(session)) == {1: "a", 2: "b"}
    database.migrate()  # start-up puts the row back
    assert setup_seq(database) == 0


def test_concurrent_writers_never_leave_a_reader_with_an_older_answer(database: Database) -> None:
    """Writers raise the queue's weight by one per transaction (each also moves the setup sequence by one);
    readers read the kept queue. A kept value must show at least the weight of the sequence the reader's
    transaction saw (on SQLite, whose reads are snapshots, exactly that weight)."""
    done = threading.Event()
    failures: list[str] = []
    first = setup_seq(database)

    def write(_k: int) -> None:
        for _ in range(40):
            with database.session() as session:
                session.execute(update(QueueRow).where(QueueRow.name == "a").values(weight=QueueRow.weight + 1))
            if random.random() < 0.3:
                done.wait(0.001)

    def read() -> None:
        while not done.is_set():
            with database.session(write=False) as session:
                kept = queues.project_queue(session, 1)
                seen = setup_cache.setup_seq(session)  # the sequence `kept` was answered at
            assert kept is not None and seen is not None
            at_seen = 1.0 + seen - first
            if kept.weight < at_seen or (database.is_sqlite and kept.weight != at_seen):
                failures.append(f"kept weight {kept.weight} at sequence {seen} (weight then: {at_seen})")

    read_while_writing(read, 2, write, 3, done)
    assert failures == []
    assert database.setup_cache.hits > 0  # some reads were answered from the kept value
    with database.session(write=False) as session:
        final = queues.project_queue(session, 1)
    assert final is not None and final.weight == 121.0


def test_a_kept_value_is_read_again_once_it_is_old_whatever_the_sequence(database: Database) -> None:
    """An edit the sessions cannot count (SQL by hand) reaches the requests within `max_age_s`."""
    now = [0.0]
    database.setup_cache.clock = lambda: now[0]
    with database.session(write=False) as session:
        assert dict(accounts.project_names_kept(session)) == {1: "a"}
    with database.engine.begin() as connection:  # not through a session: not counted
        connection.exec_driver_sql("UPDATE projects SET name = 'renamed' WHERE id = 1")
    now[0] = database.setup_cache.max_age_s - 1
    with database.session(write=False) as session:
        assert dict(accounts.project_names_kept(session)) == {1: "a"}  # kept: the sequence did not move
        setup_cache.keep_again(session, ("project_names",), {1: "a"})  # replacing keeps the value's age
    now[0] = database.setup_cache.max_age_s
    with database.session(write=False) as session:
        assert dict(accounts.project_names_kept(session)) == {1: "renamed"}


def test_the_cache_is_bounded_and_keeps_no_none(database: Database) -> None:
    """At most `size` values, the least recently used going first; a None answer (an unknown token's) is never
    kept, so callers with made-up tokens cannot grow it."""
    database.setup_cache.size = 2
    reads: list[str] = []

    def reader(key: str, answer: str | None) -> object:
        def read(_session: object) -> str | None:
            reads.append(key)
            return answer
        return read

    with database.session(write=False) as session:
        for key in ("a", "b", "a", "c", "a", "b"):  # b is the least recently used when c comes
            cached(session, key, reader(key, key))
        for k in range(50):
            assert cached(session, f"bad{k}", reader("bad", None)) is None
    assert reads == ["a", "b", "c", "b", *["bad"] * 50]
    assert len(database.setup_cache) == 2


def test_writers_of_either_sequence_or_both_never_deadlock(database: Database) -> None:
    """Transactions that move the scheduler's sequence (a workload), the setup sequence (a token's revocation)
    or both (a node: its capacity counts for both), from 6 threads at once: each sequence ends moved once per
    transaction that counted for it, and no transaction failed (a deadlock would abort one on PostgreSQL)."""
    with database.session() as session:
        session.add_all([TokenRow(id=100 + k, user_id=1, name=f"t{k}", token_hash=f"{k:064d}", prefix="p",
                                  created_at=0.0) for k in range(30)])
    before = (seq_of(database, changes.COUNTER_ID), setup_seq(database))
    errors: list[BaseException] = []

    def write(kind: int) -> None:
        try:
            for k in range(10):
                with database.session() as session:
                    if kind % 3 == 0:
                        session.add(WorkloadRow(name="w", kind="job", project_id=1, queue="a", user_id=1, spec={},
                                                priority=0, replica_count=1, submitted_at=0.0, updated_at=0.0))
                    elif kind % 3 == 1:
                        token = session.get(TokenRow, 100 + (kind // 3) * 10 + k)
                        assert token is not None
                        token.revoked_at = 1.0
                    else:
                        session.add(NodeRow(name=f"n{kind}-{k}", cpu_milli=1000, memory_mib=1024, gpus=[], labels={},
                                            taints=[], source="test", registered_at=0.0, heartbeat_at=0.0))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(kind,)) for kind in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    # workloads (20) and nodes (20) move the scheduler's sequence; revocations (20) and nodes (20) the setup one
    assert (seq_of(database, changes.COUNTER_ID), setup_seq(database)) == (before[0] + 40, before[1] + 40)


def seq_of(db: Database, counter: int) -> int:
    with db.session(write=False) as session:
        value = changes.current(session, counter)
    assert value is not None
    return value
