"""The array worker: each job array's status follows its tasks.

One pass (level-triggered: it reads everything from the store, so a restart at any point is harmless) looks
at every array that has not ended, counts its tasks by status with one GROUP BY, and moves the array
through the one status door (`domain.status.transition`) to what `domain.arrays.array_status` says:
running while any task runs (or has run); succeeded when all succeeded; failed when any failed or was lost,
once all ended; cancelled when all ended and some were cancelled. Cancelling the array itself cancels its
tasks in the same transaction (`services.workloads.cancel`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpupool.domain.arrays import ARRAY_KIND, array_status
from gpupool.domain.status import WorkloadStatus
from gpupool.server.services.arrays import status_moves, sync_status, task_counts
from gpupool.store.db import Database
from gpupool.store.orm import WorkloadRow
from gpupool.store.repos import workloads as repo

log = logging.getLogger("gpupool.arrays")
# A task runs for seconds to hours; the reconciler wakes this worker when a task's status changes, so the
# interval only bounds how late an array's status is when a wake is missed.
ARRAY_INTERVAL_S = 1.0


class ArrayWorker:
    """Runs the passes described in the module docstring; `step()` does one."""

    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self.db = db
        self.clock = clock

    def step(self) -> int:
        """One pass over every array that has not ended; returns how many changed status. The counts are read
        without the write lock; only an array whose status must change is written (its counts read again
        under its row lock, so a cancel in between is seen)."""
        with self.db.session(write=False) as session:
            due = [
                array_id
                for array_id, status, counts in _arrays_and_counts(session)
                if counts and status_moves(WorkloadStatus(status), array_status(counts)[0])
            ]
        changed = 0
        for array_id in due:
            changed += self.db.transaction(partial(self._sync, array_id=array_id))
        if changed:
            log.info("%d array(s) changed status", changed)
        return changed

    def _sync(self, session: Session, *, array_id: int) -> int:
        row = repo.workload_by_id(session, array_id, for_update=True)
        counts = task_counts(session, [array_id]).get(array_id, {})
        if row is None or not counts:
            return 0
        target, reason = array_status(counts)
        return int(sync_status(row, target, reason, self.clock()))


def _arrays_and_counts(session: Session) -> list[tuple[int, str, dict[str, int]]]:
    """(id, status, tasks by status) of every array that has not ended."""
    rows = session.execute(
        select(WorkloadRow.id, WorkloadRow.status)
        .where(WorkloadRow.kind == ARRAY_KIND, WorkloadRow.status.in_(repo.LIVE_STATUSES))
        .order_by(WorkloadRow.id)
    ).all()
    counts = task_counts(session, [r[0] for r in rows])
    return [(int(array_id), str(status), counts.get(array_id, {})) for array_id, status in rows]
