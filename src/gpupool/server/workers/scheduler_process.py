"""SchedulerProcess: the scheduling loop in a process of its own, beside the server's.

With `scheduler_process` on, the server runs the same `SchedulingLoop` on the same store in a child
(`python -m gpupool.server.workers.scheduler_process`, through `WorkerProcess`: numbered wakes, counters,
restarts, the fallback to a thread, exit when the server is gone), so scheduling passes run on another core
than the API's. The child says ("changed",) after a step that bound or preempted (the server wakes its
reconciler) and reports the reservations it holds when they changed (the server's own loop keeps them for
dry runs).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from gpupool.scheduler.profile import SchedulerProfile
from gpupool.scheduler.types import HeldReservation
from gpupool.server.workers.loop import IntervalWorker
from gpupool.server.workers.worker_process import ReportingWorker, WorkerProcess, child_connection, serve_parent


@dataclass(frozen=True)
class SchedulerConfig:
    """What the child needs: the store, the scheduler's profile, its interval and minimum gap, the log level."""

    database_url: str
    profile: SchedulerProfile
    interval_s: float
    min_gap_s: float
    log_level: str = "info"


class SchedulerProcess(WorkerProcess):
    """The scheduling worker as a child process (see WorkerProcess). `on_change` is called after a step of the
    child bound or preempted; `on_held` with the reservations the child holds, when they change."""

    def __init__(self, config: SchedulerConfig, on_change: Callable[[], None],
                 on_held: Callable[[dict[str, HeldReservation]], None] = lambda _held: None,
                 fallback: IntervalWorker | None = None) -> None:
        super().__init__("scheduler", __name__, config, on_change, on_held, fallback)


def _child_main(fd: int) -> None:
    """The child: read the configuration, run the loop until the server says stop or is gone."""
    from gpupool.executors.local import pick_free_ports  # noqa: PLC0415  (the child's imports only)
    from gpupool.server.clock import SteadyClock  # noqa: PLC0415
    from gpupool.server.workers.scheduling import SchedulingLoop  # noqa: PLC0415
    from gpupool.store.db import Database  # noqa: PLC0415

    conn, config, send = child_connection(fd)
    db = Database(config.database_url)
    loop = SchedulingLoop(db, SteadyClock(), config.profile, lambda _node, count: pick_free_ports(count),
                          on_change=lambda: send(("changed",)))
    reported: dict[str, HeldReservation] = {}

    def held_if_changed() -> dict[str, HeldReservation] | None:
        """The reservations the loop holds, when they changed since the last report."""
        nonlocal reported
        held = loop.held_reservations()
        changed, reported = held != reported, held
        return held if changed else None

    serve_parent(conn, ReportingWorker("scheduler", loop.step, config.interval_s, config.min_gap_s, send,
                                       held_if_changed))
    db.dispose()


if __name__ == "__main__":
    _child_main(int(sys.argv[1]))
