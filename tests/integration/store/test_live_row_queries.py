"""The workers read the live workloads and replicas several times a second, and the tables keep every
workload ever run: those reads must find the live rows through an index (SQLite's plan says SEARCH), not
read the whole table (SCAN). Each query is captured as the worker's code runs it, then explained."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from gpupool.domain.replicas import TERMINAL_REPLICA_STATES, ReplicaState
from gpupool.domain.status import TERMINAL_STATUSES, WorkloadStatus
from gpupool.server.workers.arrays import _arrays_and_counts
from gpupool.store.db import Database
from gpupool.store.repos import services, workloads


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'plans.db'}")
    db.migrate()
    yield db
    db.dispose()


def _plans(db: Database, read: Callable[[Session], Any]) -> list[str]:
    """The query plan lines of every statement `read` runs (on an empty store: the plan is what is checked)."""
    statements: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    with db.session(write=False) as session:
        engine = session.get_bind()
        event.listen(engine, "before_cursor_execute", capture)
        try:
            read(session)
        finally:
            event.remove(engine, "before_cursor_execute", capture)
        assert statements, "the read ran no query"
        return [str(row[3]) for statement, parameters in statements
                for row in session.connection().exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)]


@pytest.mark.parametrize("read", [workloads.live_replicas, services.live_services, services.live_children,
                                  _arrays_and_counts],
                         ids=["live_replicas", "live_services", "live_children", "live_arrays"])
def test_live_rows_are_found_through_an_index(database: Database, read: Callable[[Session], Any]) -> None:
    plans = _plans(database, read)
    scans = [line for line in plans if line.startswith("SCAN") and ("workloads" in line or "replicas" in line)]
    assert not scans, plans


def test_the_live_statuses_are_every_status_that_is_not_terminal() -> None:
    assert sorted(workloads.LIVE_STATUSES) == sorted(s.value for s in WorkloadStatus if not s.is_terminal())
    assert {s.value for s in WorkloadStatus} - set(workloads.LIVE_STATUSES) == {s.value for s in TERMINAL_STATUSES}
    assert {s.value for s in ReplicaState} - set(workloads.LIVE_REPLICA_STATES) == set(TERMINAL_REPLICA_STATES)
