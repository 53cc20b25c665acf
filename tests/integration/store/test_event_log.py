"""A transaction's history rows on SQLite and PostgreSQL: written together at commit (one INSERT, before the
change counter's increment), seen by the transaction's own queries, dropped with a rollback, and kept with the
savepoint that added them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, select
from tests.support.databases import seeded_database

from gpupool.domain.status import WorkloadStatus, transition
from gpupool.store import event_log
from gpupool.store.db import Database
from gpupool.store.orm import EventRow, WorkloadRow
from gpupool.store.repos import workloads as repo

WORKLOAD = 1000


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with seeded_database(request.param, tmp_path, WorkloadRow(
            id=WORKLOAD, name="w", kind="job", project_id=1, queue="a", user_id=1, spec={}, priority=0,
            replica_count=1, submitted_at=0.0, updated_at=0.0)) as db:
        yield db


def _reasons(db: Database) -> list[str]:
    with db.session(write=False) as session:
        return [e.reason for e in session.scalars(select(EventRow).order_by(EventRow.id))]


class _Statements:
    """The statements every connection runs while the block is open."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def _record(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.seen.append(" ".join(statement.split()))

    def __enter__(self) -> _Statements:
        event.listen(Engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *_exc: object) -> None:
        event.remove(Engine, "before_cursor_execute", self._record)


def test_a_transactions_events_are_one_insert_before_the_counter_in_the_order_added(database: Database) -> None:
    with _Statements() as statements, database.session() as session:
        row = session.get(WorkloadRow, WORKLOAD)
        assert row is not None
        repo.add_event(session, WORKLOAD, 1.0, "first", replica=0)
        transition(row, WorkloadStatus.SCHEDULED, "second", 2.0)  # a status change: a counted update
        repo.add_event(session, WORKLOAD, 3.0, "third")
        assert event_log.pending_count(session) == 3
    inserts = [s for s in statements.seen if s.startswith("INSERT INTO events")]
    counter = [k for k, s in enumerate(statements.seen) if s.startswith("UPDATE change_counter")]
    assert len(inserts) == 1 and counter, statements.seen
    assert statements.seen.index(inserts[0]) < counter[0], statements.seen  # the increment stays last
    assert _reasons(database) == ["first", "second", "third"]
    with database.session(write=False) as session:
        second = session.scalars(select(EventRow).where(EventRow.reason == "second")).one()
        assert (second.from_status, second.to_status, second.at) == ("pending", "scheduled", 2.0)


def test_the_transactions_own_query_sees_them_and_a_rollback_drops_them(database: Database) -> None:
    with database.session() as session:
        repo.add_event(session, WORKLOAD, 1.0, "kept")
        seen = [e.reason for e in session.scalars(select(EventRow).where(EventRow.workload_id == WORKLOAD))]
        assert seen == ["kept"] and event_log.pending_count(session) == 0
    with pytest.raises(RuntimeError), database.session() as session:
        repo.add_event(session, WORKLOAD, 2.0, "dropped")
        raise RuntimeError("the transaction fails")
    with database.session() as session:
        repo.add_event(session, WORKLOAD, 3.0, "also dropped")
        session.rollback()
    assert _reasons(database) == ["kept"]


def test_a_savepoint_keeps_its_events_and_its_rollback_takes_only_those(database: Database) -> None:
    with database.session() as session:
        repo.add_event(session, WORKLOAD, 1.0, "before")
        with pytest.raises(RuntimeError), session.begin_nested():
            repo.add_event(session, WORKLOAD, 2.0, "in a savepoint that rolls back")
            session.scalars(select(EventRow)).all()  # a query inside a savepoint writes nothing there
            raise RuntimeError("the savepoint fails")
        with session.begin_nested():
            repo.add_event(session, WORKLOAD, 3.0, "in a savepoint released")
            with pytest.raises(RuntimeError), session.begin_nested():
                repo.add_event(session, WORKLOAD, 4.0, "in an inner savepoint that rolls back")
                raise RuntimeError("the inner savepoint fails")
        repo.add_event(session, WORKLOAD, 5.0, "after")
    assert _reasons(database) == ["before", "in a savepoint released", "after"]
