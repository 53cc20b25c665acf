"""Monitoring: GPU readings and time series as JSON under /api/v1, the wasted-GPU report, and the
Prometheus exposition at /metrics.

/metrics needs a token: an administrator's API token, or the scrape token the server was given
(GPUPOOL_METRICS_TOKEN), since its labels name every project's workloads; GPUPOOL_METRICS_PUBLIC=true
serves it to anyone (a scraper on a trusted network without credentials).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily
from pydantic import SecretStr

from gpupool.domain.errors import AuthenticationError
from gpupool.server.api import gpu_schemas
from gpupool.server.api.deps import PrincipalDep, ServicesDep, get_principal
from gpupool.server.api.routes.workloads import ERRORS, WorkloadId
from gpupool.server.services import monitoring
from gpupool.server.workers.loop import IntervalWorker
from gpupool.server.workers.worker_process import WorkerProcess
from gpupool.store.group_commit import GroupCommit

router = APIRouter(tags=["monitoring"])
exposition = APIRouter(tags=["monitoring"])
Since = Annotated[float | None, Query(ge=0, le=1e11, description="Seconds since the epoch (default: an hour ago)")]
Until = Annotated[float | None, Query(ge=0, le=1e11, description="Seconds since the epoch (default: now)")]
MaxPoints = Annotated[int | None, Query(ge=1, le=monitoring.MAX_POINTS, description="Merge down to this many")]


@router.get("/metrics/gpus", response_model=list[gpu_schemas.GpuNow], responses=ERRORS)
def gpus_now(services: ServicesDep, principal: PrincipalDep) -> list[gpu_schemas.GpuNow]:
    """Every GPU's latest reading (utilisation, memory, power, temperature) and the replicas using it."""
    with services.db.session(write=False) as session:
        return monitoring.gpu_table(session, services.gpu_runtime(), principal)


@router.get("/metrics/gpus/series", response_model=gpu_schemas.SeriesPage, responses=ERRORS)
def gpu_series(services: ServicesDep, _principal: PrincipalDep,
               node: Annotated[str | None, Query(max_length=63)] = None,
               gpu: Annotated[int | None, Query(ge=0, le=1023)] = None,
               metric: Annotated[str | None, Query(max_length=32)] = None,
               since: Since = None, until: Until = None, max_points: MaxPoints = None) -> gpu_schemas.SeriesPage:
    """GPU time series (downsampled history), filtered by node, GPU index and metric."""
    return monitoring.gpu_series(services.gpu_runtime(), services.clock(), node, gpu, metric, since, until,
                                 max_points)


@router.get("/metrics/workloads/{workload_id}", response_model=gpu_schemas.SeriesPage, responses=ERRORS)
def workload_series(workload_id: WorkloadId, services: ServicesDep, principal: PrincipalDep,
                    since: Since = None, until: Until = None, max_points: MaxPoints = None) -> gpu_schemas.SeriesPage:
    """The GPU memory a workload's processes held over time, per node."""
    with services.db.session(write=False) as session:
        return monitoring.workload_series(session, services.gpu_runtime(), principal, workload_id,
                                          services.clock(), since, until, max_points)


@router.get("/reports/idle", response_model=gpu_schemas.IdleReport, responses=ERRORS)
def idle_report(services: ServicesDep, principal: PrincipalDep) -> gpu_schemas.IdleReport:
    """Wasted GPUs: allocations whose card has been idle longer than the threshold (administrators)."""
    with services.db.session(write=False) as session:
        return monitoring.idle_report(session, services.gpu_runtime(), principal, services.clock())


@exposition.get("/metrics", response_class=Response, responses={
    200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition"}, **ERRORS})
def prometheus(request: Request, services: ServicesDep) -> Response:
    """Prometheus metrics: GPU readings and health, workload GPU memory, idle allocations, over-use counts,
    queue depth, allocation ratios. Needs an administrator's token or the scrape token (see the module
    docstring)."""
    settings = services.settings
    if not settings.metrics_public and not _is_scrape_token(request, settings.metrics_token):
        get_principal(request).require_admin("read /metrics (or configure GPUPOOL_METRICS_TOKEN for a scraper)")
    runtime = services.gpu_runtime()
    with runtime.reading():
        body = runtime.metrics.render()
    gateway = getattr(request.app.state, "gateway", None)  # the services' request metrics
    if gateway is not None:
        body += generate_latest(gateway.metrics.registry)
    body += worker_families(services.workers()) + _exposition(SubmitGroupCounters(services.submit_group()))
    return Response(body, media_type=runtime.metrics.content_type)


class WorkerCounters:
    """A Prometheus collector of the background workers' counters, one series per worker (label `worker`):
    CPU seconds spent in passes, passes completed, passes that ended with an error."""

    def __init__(self, workers: list[IntervalWorker | WorkerProcess]) -> None:
        self.workers = workers

    def collect(self) -> Iterator[CounterMetricFamily]:
        """The three counter families, read from the workers now."""
        for name, help_text, value in (
                ("gpupool_worker_cpu_seconds", "CPU time each background worker of the server spent in its passes",
                 lambda worker: worker.cpu_s),
                ("gpupool_worker_passes", "Passes each background worker completed", lambda worker: worker.steps),
                ("gpupool_worker_failed_passes", "Passes each background worker ended with an error (see the "
                 "server log)", lambda worker: worker.failures)):
            family = CounterMetricFamily(name, help_text, labels=["worker"])
            for worker in self.workers:
                family.add_metric([worker.name], float(value(worker)))
            yield family


def worker_families(workers: list[IntervalWorker | WorkerProcess]) -> bytes:
    """The workers' counters (WorkerCounters) in the Prometheus text format."""
    return _exposition(WorkerCounters(workers))


def _exposition(collector: WorkerCounters | SubmitGroupCounters) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)


class SubmitGroupCounters:
    """A Prometheus collector of the single submits' write transactions (store/group_commit.py): how many, and
    how many submits they stored; their ratio is the mean number of submits that shared one."""

    def __init__(self, group: GroupCommit) -> None:
        self.group = group

    def collect(self) -> Iterator[CounterMetricFamily]:
        """The two counter families, read now."""
        yield CounterMetricFamily("gpupool_submit_transactions", "Write transactions that stored single submits "
                                  "(on SQLite, submits that wait for the write lock together share one)",
                                  value=self.group.transactions)
        yield CounterMetricFamily("gpupool_submits_in_transactions", "Single submits those transactions ran",
                                  value=self.group.works)


def _is_scrape_token(request: Request, secret: SecretStr | None) -> bool:
    expected = secret.get_secret_value() if secret is not None else ""
    header = request.headers.get("authorization") or ""
    scheme, _, token = header.strip().partition(" ")
    if not expected or scheme.lower() != "bearer":
        return False
    if not token.strip():
        raise AuthenticationError("malformed Authorization header; expected 'Bearer <token>'")
    return hmac.compare_digest(token.strip().encode(), str(expected).encode())
