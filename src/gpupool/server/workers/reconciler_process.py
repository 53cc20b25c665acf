"""The reconciler in a process of its own, beside the server's (and the scheduler's).

With `reconciler_process` on, the server starts `python -m gpupool.server.workers.reconciler_process` and
talks to it as it talks to the scheduler's child (`WorkerProcess`, the same messages and restarts): the
server numbers its wakes (binds, cancels, preemptions, a replica the sampler stopped), the child answers each
pass with the wakes it served and its counters, and says ("changed",) after a pass that changed a workload's
status or freed capacity (the server then wakes the scheduler, the sweeps and the arrays). The child builds
its own executor, storage layout, GPU sharing set-up, notebook keys, environments and sweep studies from the
server's settings: every one of them keeps what must be shared in the store or in files (the local
executor's replicas are found again from their state files, as after a server restart), so a pass in the
child does exactly what it does in a thread of the server.

Only for executors whose replicas the server does not hold in memory between passes: the local executor
(its supervisors and state files) and the fake one named in the settings (`GPUPOOL_EXECUTOR=fake`, whose
replicas then live in the child: the server's own fake executor, used by `logs`, sees none of them). An
executor given to the server object (tests), a clock given to it, or a notebook warm pool (its parked servers
belong to the executor that launches) keeps the reconciler in a thread (`build_services`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gpupool.server.workers.loop import IntervalWorker
from gpupool.server.workers.worker_process import ReportingWorker, WorkerProcess, child_connection, serve_parent

if TYPE_CHECKING:
    from gpupool.server.settings import Settings


@dataclass(frozen=True)
class ReconcilerConfig:
    """What the child needs: the server's settings (it builds its executor and launch set-up from them)."""

    settings: Settings

    @property
    def log_level(self) -> str:
        """The server's log level, for the child's log."""
        return self.settings.log_level

    @property
    def interval_s(self) -> float:
        """The reconciler's interval (a pass at least this often, woken or not)."""
        return self.settings.reconcile_interval_s

    @property
    def min_gap_s(self) -> float:
        """No minimum gap between woken passes (as the reconciler's thread)."""
        return 0.0


class ReconcilerProcess(WorkerProcess):
    """The reconciler as a child process (see WorkerProcess). `on_change` is called after a pass of the child
    that changed a workload's status or freed capacity."""

    def __init__(self, config: ReconcilerConfig, on_change: Callable[[], None],
                 fallback: IntervalWorker | None = None) -> None:
        super().__init__("reconciler", __name__, config, on_change, fallback=fallback)


def _child_main(fd: int) -> None:
    """The child: build the reconciler from the server's settings and run it until the server says stop or
    is gone."""
    from gpupool.gpu.sharing import SharingConfig  # noqa: PLC0415  (the child's imports only)
    from gpupool.server.clock import SteadyClock  # noqa: PLC0415
    from gpupool.server.environments import EnvironmentStore, uv_settings  # noqa: PLC0415
    from gpupool.server.executors import make_executor  # noqa: PLC0415
    from gpupool.server.notebook_keys import NotebookKeys  # noqa: PLC0415
    from gpupool.server.services.sweep_study import SweepStudies  # noqa: PLC0415
    from gpupool.server.workers.launch import launch_settings  # noqa: PLC0415
    from gpupool.server.workers.reconciler import Reconciler  # noqa: PLC0415
    from gpupool.store.db import Database  # noqa: PLC0415

    conn, config, send = child_connection(fd)
    settings = config.settings
    db = Database(settings.resolved_database_url)
    executor = make_executor(settings)
    studies = SweepStudies(settings.resolved_database_url)
    envs = EnvironmentStore(settings.home / "environments", uv_settings(settings),
                            int(settings.environments_user_quota_gib * 2**30))
    launch = launch_settings(settings, SharingConfig(settings.home, settings.hami_library),
                             NotebookKeys.from_file(settings.home / "notebook.key"), envs, studies)
    reconciler = Reconciler(db, SteadyClock(), executor, launch, settings.stop_grace_s,
                            on_change=lambda: send(("changed",)), start_timeout_s=settings.start_timeout_s)
    serve_parent(conn, ReportingWorker("reconciler", reconciler.step, config.interval_s, config.min_gap_s, send))
    studies.close()
    executor.close()
    db.dispose()


if __name__ == "__main__":
    _child_main(int(sys.argv[1]))
