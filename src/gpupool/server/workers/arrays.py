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

from sqlalchemy import select

from gpupool.domain.arrays import ARRAY_KIND, array_status
from gpupool.domain.status import TERMINAL_STATUSES
from gpupool.server.services.arrays import sync_status, task_counts
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
        """One pass over every array that has not ended; returns how many changed status."""
        now = self.clock()
        changed = 0
        with self.db.session() as session:
            ids = session.scalars(
                select(WorkloadRow.id)
                .where(WorkloadRow.kind == ARRAY_KIND, WorkloadRow.status.not_in([s.value for s in TERMINAL_STATUSES]))
                .order_by(WorkloadRow.id)
            ).all()
            counts = task_counts(session, list(ids))
            for array_id in ids:
                tasks = counts.get(array_id, {})
                if not tasks:
                    continue
                target, reason = array_status(tasks)
                row = repo.workload_by_id(session, array_id, for_update=True)
                if row is not None and sync_status(row, target, reason, now):
                    changed += 1
        if changed:
            log.info("%d array(s) changed status", changed)
        return changed
