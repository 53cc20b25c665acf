"""What a workload's history rows cost to write: transactions that each load 20 workloads and give each two
status changes and one replica event (what a reconciler pass does to a job it starts), on a fresh SQLite
store; the CPU time of the writing thread per workload, median of 180 transactions after 20 of warm-up.

    python benchmarks/control_plane/event_rows.py [LABEL]
    PYTHONPATH=/tmp/old/src python benchmarks/control_plane/event_rows.py before   # another commit's code
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import select

from gpupool.domain.status import WorkloadStatus, transition
from gpupool.store.db import Database
from gpupool.store.orm import ProjectRow, QueueRow, UserRow, WorkloadRow
from gpupool.store.repos import workloads as repo

WORKLOADS, PER_TRANSACTION, WARM_UP = 4_000, 20, 20


def seeded(home: Path) -> Database:
    """A migrated store with one project, queue and user and WORKLOADS pending workloads."""
    db = Database(f"sqlite:///{home / 'db.sqlite'}")
    db.migrate()
    with db.session() as session:
        session.add_all([ProjectRow(id=1, name="a", created_at=0.0), UserRow(id=1, name="u", created_at=0.0)])
        session.flush()
        session.add(QueueRow(name="a", project_id=1, updated_at=0.0))
        session.add_all(WorkloadRow(id=k, name="w", kind="job", project_id=1, queue="a", user_id=1, spec={},
                                    priority=0, replica_count=1, submitted_at=0.0, updated_at=0.0)
                        for k in range(1, WORKLOADS + 1))
    return db


def main() -> None:
    """Print the median CPU milliseconds per workload."""
    label = sys.argv[1] if len(sys.argv) > 1 else "this code"
    with tempfile.TemporaryDirectory() as tmp:
        db = seeded(Path(tmp))
        per_workload = []
        for start in range(1, WORKLOADS + 1, PER_TRANSACTION):
            ids = list(range(start, start + PER_TRANSACTION))
            began = time.thread_time()
            with db.session() as session:
                for row in session.scalars(select(WorkloadRow).where(WorkloadRow.id.in_(ids))):
                    transition(row, WorkloadStatus.SCHEDULED, "scheduled on n1", 1.0)
                    repo.add_event(session, row.id, 1.0, "replica 0 is ready on port(s) 8000", 0)
                    transition(row, WorkloadStatus.STARTING, "started 1 replica(s) on n1", 2.0)
            per_workload.append((time.thread_time() - began) * 1000 / PER_TRANSACTION)
        db.dispose()
    print(f"{label}: {statistics.median(per_workload[WARM_UP:]):.3f} ms of CPU per workload "
          "(2 status changes, 3 history rows)")


if __name__ == "__main__":
    main()
