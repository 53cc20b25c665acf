"""create_app(settings): the FastAPI application, its lifespan (database, first-start bootstrap, local
nodes and their GPUs, background workers) and its routes under /api/v1, with /healthz, the Prometheus
exposition at /metrics and the OpenAPI docs at /docs."""

from __future__ import annotations

import gc
import logging
import os
import warnings
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from pydantic.warnings import UnsupportedFieldAttributeWarning

from gpupool import __version__
from gpupool.console import install as install_console
from gpupool.domain.errors import ConflictError
from gpupool.executors.base import Executor
from gpupool.executors.storage import StorageLayout
from gpupool.gpu.nvml import NvmlBackend
from gpupool.gpu.sharing import install_sitecustomize
from gpupool.scheduler.profile import SchedulerProfile
from gpupool.server.api.body_limit import BodyLimit
from gpupool.server.api.deps import remember_caller
from gpupool.server.api.errors import install_error_handlers
from gpupool.server.api.routes import (
    accounts,
    environments,
    gateway,
    gpus,
    metrics,
    notebooks,
    pipelines,
    pool,
    proxy,
    sweeps,
    system,
    workloads,
)
from gpupool.server.api.routes import cordon as cordon_routes
from gpupool.server.api.routes import services as service_routes
from gpupool.server.api.routes import usage as usage_routes
from gpupool.server.clock import SteadyClock
from gpupool.server.context import Clock, Services
from gpupool.server.environments import EnvironmentStore, uv_settings
from gpupool.server.executors import make_executor
from gpupool.server.gateway import Gateway
from gpupool.server.gpu_runtime import GpuRuntime
from gpupool.server.local_node import BackendFactory
from gpupool.server.node_providers import LocalHostProvider, NodeProvider, NodeSync
from gpupool.server.notebook_keys import NotebookKeys
from gpupool.server.services.auth import authenticate
from gpupool.server.services.bootstrap import ensure_admin
from gpupool.server.services.sweep_study import SweepStudies
from gpupool.server.settings import Settings
from gpupool.server.state_files import ServerLock, secure_files, secure_home
from gpupool.server.workers.arrays import ARRAY_INTERVAL_S, ArrayWorker
from gpupool.server.workers.autoscaler import start_gateway
from gpupool.server.workers.culler import NotebookCuller
from gpupool.server.workers.launch import launch_settings
from gpupool.server.workers.loop import IntervalWorker
from gpupool.server.workers.pipelines import pipeline_worker
from gpupool.server.workers.reconciler import Reconciler
from gpupool.server.workers.reconciler_process import ReconcilerConfig, ReconcilerProcess
from gpupool.server.workers.sampler import GpuSampler
from gpupool.server.workers.scheduler_process import SchedulerConfig, SchedulerProcess
from gpupool.server.workers.scheduling import SchedulingLoop
from gpupool.server.workers.sweeps import SWEEP_INTERVAL_S, SweepController
from gpupool.store.db import Database

log = logging.getLogger("gpupool.server")
MAX_BODY_BYTES = 2 * 1024 * 1024  # 2 MiB: a thousand times the largest spec in examples/, far below RAM
# A scheduling cycle starts at most every 0.1 s: a burst of submissions is placed by one cycle (each reloads the
# pool from the store), and 0.1 s is a tenth of the 1 s a submission may wait to be bound or told why not
SCHEDULE_MIN_GAP_S = 0.1
# The sweep controller and the array worker are woken by every replica change (many a second while a burst of
# jobs starts and ends) but have nothing to do unless a trial or a task changed: a woken pass starts at most
# every 0.25 s, a quarter of the 1 s a trial or task may wait to be followed up, and half their 0.5 s (sweeps)
# or a quarter of their 1 s (arrays) interval, so a wake still acts sooner than the interval would
CONTROLLER_MIN_GAP_S = 0.25


def build_services(settings: Settings, executor: Executor | None = None, clock: Clock | None = None,
                   providers: Sequence[NodeProvider] = (), *, own_executor: bool = False) -> Services:
    """The shared services of one server (database opened, workers built but not started); `providers` are
    the sources of nodes (see start_services). The clock is a SteadyClock unless one is given (tests). The
    executor is made from the settings unless one is given; `own_executor` says a given one was made so too."""
    own_clock = clock is None
    clock = clock or SteadyClock()
    db = Database(settings.resolved_database_url)
    services = Services(settings, db, clock, executor or make_executor(settings),
                        own_executor=own_executor or executor is None)
    services.gpus = runtime = GpuRuntime(settings)
    profile = SchedulerProfile(policy=settings.policy, preemption=settings.preemption, backfill=settings.backfill,
                               min_runtime_s=settings.min_runtime_s,
                               fair_share_preemption=settings.fair_share_preemption,
                               max_preemptions_per_cycle=settings.max_preemptions_per_cycle,
                               hold_after_s=settings.hold_after_s)
    services.scheduling_loop = SchedulingLoop(db, clock, profile, services.executor.free_ports,
                                              on_change=services.wake_reconciler)
    studies = services.studies = SweepStudies(settings.resolved_database_url)
    keys = services.notebook_keys = NotebookKeys.from_file(settings.home / "notebook.key")
    envs = services.environments = EnvironmentStore(settings.home / "environments", uv_settings(settings),
                                                    int(settings.environments_user_quota_gib * 2**30))
    services.feasibility.environments = envs  # `environment:` is checked at submission
    launch = launch_settings(settings, runtime.sharing, keys, envs, studies)
    services.reconciler_loop = Reconciler(db, clock, services.executor, launch, settings.stop_grace_s,
                                          on_change=services.wake_after_replicas_change,
                                          start_timeout_s=settings.start_timeout_s)
    sampler = GpuSampler(db, clock, runtime, services.executor, on_stop=services.wake_reconciler,
                         mps_check_interval_s=settings.mps_check_interval_s)
    services.scheduler = _scheduling_worker(services, profile, own_clock)
    services.reconciler = _reconciler_worker(services, own_clock)
    services.sampler = IntervalWorker("sampler", sampler.step, settings.sample_interval_s)
    node_sync = services.node_sync = NodeSync(db, clock, providers, runtime, services.executor,
                                              on_change=services.wake_workers)
    services.nodes_worker = IntervalWorker("nodes", lambda: node_sync.step() and None, settings.node_sync_interval_s)
    controller = SweepController(db, clock, studies, services.feasibility, on_change=services.wake_scheduler)
    services.sweeps = IntervalWorker("sweeps", controller.step, SWEEP_INTERVAL_S, min_gap_s=CONTROLLER_MIN_GAP_S)
    array_worker = services.array_worker = ArrayWorker(db, clock)
    # The step's count of changed arrays is not a delay: dropped, so an idle pass waits for the interval
    services.arrays = IntervalWorker("arrays", lambda: (array_worker.step(), None)[1], ARRAY_INTERVAL_S,
                                     min_gap_s=CONTROLLER_MIN_GAP_S)
    services.pipelines = pipeline_worker(services.db, clock, StorageLayout(settings.home), services.feasibility,
                                         services.wake_scheduler)
    culler = services.notebook_culler = NotebookCuller(db, clock, keys, settings.notebook_idle_timeout,
                                                       on_change=services.wake_workers,
                                                       interval_s=settings.notebook_cull_interval_s)
    services.culler = IntervalWorker("culler", culler.step, settings.notebook_cull_interval_s)
    return services


def _scheduling_worker(services: Services, profile: SchedulerProfile,
                       own_clock: bool) -> IntervalWorker | SchedulerProcess:
    """The scheduling loop's worker: a thread of this process, or with `scheduler_process` (by default when
    this machine has more than one CPU) a child process (server/workers/scheduler_process.py) when the
    executor's replicas run on this host (local, or fake: the child picks free ports here) and the clock is
    the server's own (not one a test injected)."""
    settings, loop = services.settings, services.scheduling_loop
    assert loop is not None  # built just before
    thread = IntervalWorker("scheduler", loop.step, settings.schedule_interval_s, min_gap_s=SCHEDULE_MIN_GAP_S)
    if _stays_a_thread("scheduler", settings.scheduler_process,
                       lambda: _why_no_scheduler_process(services, own_clock)):
        return thread
    config = SchedulerConfig(settings.resolved_database_url, profile, settings.schedule_interval_s,
                             SCHEDULE_MIN_GAP_S, settings.log_level)
    return SchedulerProcess(config, on_change=services.wake_reconciler, on_held=loop.keep_held, fallback=thread)


def _reconciler_worker(services: Services, own_clock: bool) -> IntervalWorker | ReconcilerProcess:
    """The reconciler's worker: a thread of this process, or with `reconciler_process` (by default when this
    machine has more than one CPU) a child process (server/workers/reconciler_process.py) under the
    scheduler's conditions, when this server made its executor from its settings (the child makes its own
    the same way) and keeps no notebook warm pool (the parked servers belong to the executor that launches)."""
    settings, loop = services.settings, services.reconciler_loop
    assert loop is not None  # built just before
    thread = IntervalWorker("reconciler", loop.step, settings.reconcile_interval_s)
    if _stays_a_thread("reconciler", settings.reconciler_process,
                       lambda: _why_no_reconciler_process(services, own_clock)):
        return thread
    return ReconcilerProcess(ReconcilerConfig(settings), on_change=services.wake_after_replicas_change,
                             fallback=thread)


def _stays_a_thread(worker: str, asked: bool | None, why_not: Callable[[], str]) -> bool:
    """True when `worker` keeps its thread: its process is not asked for (`asked` False, or None on a machine
    with one CPU), or `why_not()` names a reason it cannot have one (logged: a warning when it was asked for)."""
    if asked is False or (asked is None and (os.cpu_count() or 1) < 2):
        return True
    reason = why_not()
    if reason:
        log.log(logging.WARNING if asked else logging.DEBUG, "the %s runs in the server's process: %s", worker,
                reason)
    return bool(reason)


def _why_no_reconciler_process(services: Services, own_clock: bool) -> str:
    """Why the reconciler cannot run in a process of its own here ("" when it can)."""
    why_not = _why_no_scheduler_process(services, own_clock)
    if not why_not and not services.own_executor:
        why_not = "this server's executor was given to it"
    if not why_not and services.settings.notebook_warm_pool:
        why_not = "the notebook warm pool is kept by the executor of the server's process"
    return why_not


def _why_no_scheduler_process(services: Services, own_clock: bool) -> str:
    """Why the scheduler cannot run in a process of its own here ("" when it can)."""
    if services.executor.name not in ("local", "fake"):
        return f"the {services.executor.name} executor chooses ports on its nodes, through this process"
    if not own_clock:
        return "this server's clock was given to it"
    return ""


def start_services(services: Services) -> None:
    """Migrate the database, bootstrap the first administrator, register the providers' nodes with their
    GPUs (one pass of the node worker), start the workers (scheduling loop, reconciler, GPU sampler, nodes)."""
    settings, runtime = services.settings, services.gpu_runtime()
    services.db.migrate()
    install_sitecustomize(runtime.sharing)  # the memory cap of replicas on time-sliced GPUs
    ensure_admin(services.db, settings.admin_name, settings.token_file, services.clock(), settings.reset_admin_token)
    secure_files(settings)
    if services.node_sync is not None:
        services.node_sync.step()
    if settings.workers:
        for worker in (services.reconciler, services.scheduler, services.sampler, services.nodes_worker,
                       services.sweeps, services.arrays, services.pipelines, services.culler):
            if worker is not None:
                worker.start()


def stop_services(services: Services) -> None:
    """Stop the workers (replicas and MPS daemons keep running), write the usage ledger's unflushed counters,
    release GPUs, executor and database."""
    for worker in (services.culler, services.sweeps, services.arrays, services.pipelines, services.nodes_worker,
                   services.sampler, services.scheduler, services.reconciler):
        if worker is not None:
            worker.stop()
    if services.studies is not None:
        services.studies.close()
    if services.gpus is not None:
        _flush_usage_ledger(services.gpus, services)
        services.gpus.close()
    services.executor.close()
    services.db.dispose()


def _flush_usage_ledger(runtime: GpuRuntime, services: Services) -> None:
    """Write the sampler's unflushed busy / idle counters, so a clean stop loses none of them."""
    try:
        runtime.ledger.flush(services.db, services.clock())
    except Exception:
        log.exception("writing the usage ledger at shutdown failed; its last interval is lost")


def _flush_traffic(gateway: Gateway, services: Services) -> None:
    """Write the gateway's unwritten per-minute traffic, so a clean stop loses none of it."""
    try:
        gateway.traffic.flush(services.db)
    except Exception:
        log.exception("writing the services' traffic at shutdown failed; its last minute is lost")


def freeze_startup_heap() -> None:
    """Move every object alive after start-up (modules, routes, tables, the workers' set-up) out of the
    garbage collector's reach (`gc.freeze`): they live as long as the server, and each full collection would
    otherwise scan them again. With the 200,000-odd start-up objects frozen, a full collection scans the
    few tens of thousands made since, and the pauses that stop every thread shrink (submit p99 with 8
    clients: 175-296 ms before, 104-183 ms after; benchmarks/control_plane/README.md, "Start-up objects
    out of the collector's reach"). Objects that die later are still freed by their reference counts."""
    gc.collect()
    gc.freeze()


def _own_providers(settings: Settings, nvml_backend: BackendFactory, executor: Executor) -> list[NodeProvider]:
    """The nodes of the pool: this host, or in cluster mode the Ray cluster's (imported only then)."""
    if executor.name != "ray":
        return [LocalHostProvider(settings, nvml_backend)]
    from gpupool.executors.ray import RayExecutor  # noqa: PLC0415
    from gpupool.server.ray_nodes import RayNodeProvider  # noqa: PLC0415

    assert isinstance(executor, RayExecutor)  # the only executor named "ray"
    return [RayNodeProvider(executor, settings.storage_dir, settings.gpu_mode)]


def _authenticate_body_sender(scope: Any, authorization: str | None) -> None:
    """AuthenticationError unless `authorization` holds a valid token (BodyLimit calls it before a body)."""
    services: Services = scope["app"].state.services
    with services.db.lookup() as session:
        found = authenticate(session, authorization, services.clock())
    remember_caller(scope, authorization, found)  # the route's PrincipalDep takes it from there


def create_app(settings: Settings | None = None, *, executor: Executor | None = None, clock: Clock | None = None,
               nvml_backend: BackendFactory = NvmlBackend, node_providers: Sequence[NodeProvider] = ()) -> FastAPI:
    """The gpupool server application. `executor`, `clock` and `nvml_backend` (the GPU backend of real
    hardware) may be injected (tests); by default the executor is the one `settings.executor` names and
    GPUs are discovered through NVML (none when NVML is absent), unless `settings.gpus` declares simulated
    ones or `settings.gpu_description` scripts fake ones. Nodes come from this host (LocalHostProvider) and
    from `node_providers` (e.g. a SimulatedNodeProvider whose nodes join and leave at run time)."""
    settings = settings or Settings()
    # FastAPI marks a body parameter named `body` with Field(alias="body"); pydantic warns that the alias has no
    # effect there when it first validates such a request (a known false positive, not a defect of ours)
    warnings.filterwarnings("ignore", message="The 'alias' attribute with value 'body'",
                            category=UnsupportedFieldAttributeWarning)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        secure_home(settings)
        pool_executor = executor or make_executor(settings)
        providers = [*_own_providers(settings, nvml_backend, pool_executor), *node_providers]
        services = build_services(settings, pool_executor, clock, providers, own_executor=executor is None)
        lock = ServerLock(settings, services.db)
        try:
            lock.acquire()
        except ConflictError as error:
            log.error("%s", error)
            services.db.dispose()
            raise
        autoscaler: IntervalWorker | None = None
        try:
            start_services(services)
            app.state.services = services
            app.state.gateway, autoscaler = start_gateway(services.db, services.clock, services.feasibility,
                                                          services.wake_workers, settings.workers,
                                                          settings.service_drain_timeout_s)
            services.autoscaler = autoscaler
            log.info("gpupool %s serving on %s:%s, database %s", __version__, settings.host, settings.port,
                     services.db.describe())
            log.info("%s", settings.user_mode_text())
            freeze_startup_heap()
            yield
        finally:
            gc.unfreeze()
            if autoscaler is not None:
                autoscaler.stop()
                _flush_traffic(app.state.gateway, services)
            await services.aclose_proxy_client()
            stop_services(services)
            lock.release()

    app = FastAPI(title="gpupool", version=__version__, lifespan=lifespan, docs_url="/docs",
                  description="One shared, fairly scheduled pool of GPU servers. Every /api/v1 call needs "
                              "'Authorization: Bearer <token>'.")
    install_error_handlers(app)

    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES, authenticate=_authenticate_body_sender)

    app.include_router(system.router)
    app.include_router(metrics.exposition)
    app.include_router(proxy.router)
    app.include_router(gateway.router)
    for module in (workloads, pool, gpus, metrics, accounts, sweeps, pipelines, service_routes, notebooks,
                   environments):
        app.include_router(module.router, prefix="/api/v1")
    app.include_router(usage_routes.router, prefix="/api/v1")
    app.include_router(cordon_routes.router, prefix="/api/v1")
    install_console(app)
    return app
