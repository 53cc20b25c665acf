"""Services: what the routes and the workers of one server share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from anyio import CapacityLimiter

from gpupool.domain.errors import GpupoolError
from gpupool.executors.base import Executor
from gpupool.server.environments import EnvironmentStore
from gpupool.server.gpu_runtime import GpuRuntime
from gpupool.server.node_providers import NodeSync
from gpupool.server.notebook_keys import NotebookKeys
from gpupool.server.services.feasibility import FeasibilityCache
from gpupool.server.services.sweep_study import SweepStudies
from gpupool.server.settings import Settings
from gpupool.server.workers.arrays import ArrayWorker
from gpupool.server.workers.culler import NotebookCuller
from gpupool.server.workers.loop import IntervalWorker
from gpupool.server.workers.reconciler import Reconciler
from gpupool.server.workers.scheduling import SchedulingLoop
from gpupool.server.workers.worker_process import WorkerProcess
from gpupool.store.db import Database
from gpupool.store.group_commit import GroupCommit

Clock = Callable[[], float]
# Submissions (single and batch) handled at once; the others wait their turn in the event loop. One interpreter
# runs every request thread and the scheduling and reconcile workers, each runnable thread getting about an equal
# turn: 50 submit threads at once left the workers a few percent of it and binding fell seconds behind (bind p95
# 1.2 s on SQLite, 3.7-4.5 s on PostgreSQL with 50 clients). With the limit, the bind p95 at 50 clients is
# 0.27-0.28 s (SQLite) and 0.55-0.63 s (PostgreSQL); the price is 10-15 % fewer submissions per second at 50
# clients, which the starved workers had bought by binding in fewer, larger passes. 8 was chosen from runs of 3,
# 6, 10 and 40 (benchmarks/control_plane/README.md, "Submissions at once"): with 8 clients nothing waits.
SUBMITS_AT_ONCE = 8
# A submission waits (at most HOLD_SUBMIT_MAX_S) while the scheduler is SCHEDULER_BEHIND_S or more behind its
# wakes: the request threads and the scheduler share one interpreter, and a scheduler that gets a ninth of it
# binds late. Half of the 1 s within which a submission should be bound or told why (0.25 s bound sooner but
# cost 10-15 % of the rate), and the wait never exceeds that second: benchmarks/control_plane/README.md, "One
# transaction fewer on PostgreSQL, and submissions held while the scheduler is behind".
SCHEDULER_BEHIND_S = 0.5
HOLD_SUBMIT_MAX_S = 1.0


@dataclass
class Services:
    """What routes and workers share: settings, database, clock, executor, caches and the workers."""

    settings: Settings
    db: Database
    clock: Clock
    executor: Executor
    feasibility: FeasibilityCache = field(default_factory=FeasibilityCache)
    own_executor: bool = True  # the executor was made from the settings (not given to the server)
    scheduler: IntervalWorker | WorkerProcess | None = None  # a child process with `scheduler_process`
    reconciler: IntervalWorker | WorkerProcess | None = None  # a child process with `reconciler_process`
    scheduling_loop: SchedulingLoop | None = None
    reconciler_loop: Reconciler | None = None
    gpus: GpuRuntime | None = None
    sampler: IntervalWorker | None = None
    node_sync: NodeSync | None = None
    nodes_worker: IntervalWorker | None = None
    pipelines: IntervalWorker | None = None  # pipeline runs and schedules (gpupool.server.workers.pipelines)
    notebook_keys: NotebookKeys | None = None
    environments: EnvironmentStore | None = None
    notebook_culler: NotebookCuller | None = None
    culler: IntervalWorker | None = None
    _proxy_client: httpx.AsyncClient | None = None
    studies: SweepStudies | None = None
    sweeps: IntervalWorker | None = None
    array_worker: ArrayWorker | None = None  # job arrays' statuses (gpupool.server.workers.arrays)
    arrays: IntervalWorker | None = None
    autoscaler: IntervalWorker | None = None  # the services' autoscaler (started with the gateway)
    _submit_limiter: CapacityLimiter | None = None
    _submit_group: GroupCommit = field(init=False)

    def submit_group(self) -> GroupCommit:
        """The group commit that single submissions share (store/group_commit.py): on SQLite, submissions waiting
        for its one write lock at once are stored in one transaction (a refused one fails alone). PostgreSQL runs
        them concurrently, each in its own: grouping them there made 8 clients 8-10 % slower (its statements'
        round trips to the database's own processes are then made one after another)."""
        return self._submit_group

    def __post_init__(self) -> None:
        self._submit_group = GroupCommit(self.db, isolated=(GpupoolError,), grouped=self.db.is_sqlite)

    def submit_limiter(self) -> CapacityLimiter:
        """The limit on submissions handled at once (see SUBMITS_AT_ONCE); created on first use, inside the
        server's event loop."""
        if self._submit_limiter is None:
            self._submit_limiter = CapacityLimiter(SUBMITS_AT_ONCE)
        return self._submit_limiter

    def workers(self) -> list[IntervalWorker | WorkerProcess]:
        """The background workers this server built (started or not), in a fixed order."""
        found = (self.scheduler, self.reconciler, self.sampler, self.nodes_worker, self.pipelines, self.sweeps,
                 self.arrays, self.culler, self.autoscaler)
        return [worker for worker in found if worker is not None]

    def proxy_client(self) -> httpx.AsyncClient:
        """The HTTP client the proxy shares (created on first use, inside the server's event loop)."""
        if self._proxy_client is None:
            from gpupool.server.proxy import new_http_client  # noqa: PLC0415  (the proxy loads on first use)

            self._proxy_client = new_http_client()
        return self._proxy_client

    async def aclose_proxy_client(self) -> None:
        """Close the proxy's client (at shutdown). Idempotent."""
        if self._proxy_client is not None:
            await self._proxy_client.aclose()
            self._proxy_client = None

    def gpu_runtime(self) -> GpuRuntime:
        """The GPU layer of this server (built with the services; RuntimeError before)."""
        if self.gpus is None:
            raise RuntimeError("the GPU runtime is not set up yet")
        return self.gpus

    def hold_while_scheduler_behind(self) -> float:
        """Wait while the scheduler has not handled a wake for SCHEDULER_BEHIND_S (at most HOLD_SUBMIT_MAX_S);
        for a submission, before it adds work. Returns the seconds waited (0 without a running scheduler)."""
        if self.scheduler is None:
            return 0.0
        return self.scheduler.wait_for_lag_below(SCHEDULER_BEHIND_S, HOLD_SUBMIT_MAX_S)

    def wake_scheduler(self) -> None:
        """Run a scheduling cycle soon (after a submit, a cancel, a queue change, freed capacity)."""
        if self.scheduler is not None:
            self.scheduler.wake()

    def wake_workers(self) -> None:
        """Run a scheduling cycle and a reconciler pass soon (after nodes joined or left)."""
        self.wake_scheduler()
        self.wake_reconciler()

    def sweep_studies(self) -> SweepStudies:
        """The Optuna studies of sweeps (RuntimeError before the services are built)."""
        if self.studies is None:
            raise RuntimeError("sweeps are not set up yet")
        return self.studies

    def wake_after_replicas_change(self) -> None:
        """The reconciler changed a workload's status or freed capacity: schedule, drive sweeps, and bring job
        arrays' statuses up to date, soon."""
        self.wake_scheduler()
        self.wake_sweeps()
        if self.arrays is not None:
            self.arrays.wake()

    def wake_sweeps(self) -> None:
        """Run a sweep controller pass soon (a trial was pruned)."""
        if self.sweeps is not None:
            self.sweeps.wake()

    def wake_reconciler(self) -> None:
        """Run a reconciler pass soon (after binds, preemptions, cancels)."""
        if self.reconciler is not None:
            self.reconciler.wake()
