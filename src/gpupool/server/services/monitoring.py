"""What the GPU monitor saw, for people and programs: the latest reading of every GPU with the replicas using
it (`gpupool top`), time series of GPUs and workloads, and the wasted-GPU report.

Readings and series live in the server's memory (`GpuRuntime`); allocations, names and permissions come
from the store. Workloads of projects the caller may not read appear without their id.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpupool.domain.errors import ValidationError
from gpupool.gpu.monitor import MonitorReport
from gpupool.server.api.gpu_schemas import (
    GPU_METRICS,
    GpuNow,
    GpuUser,
    IdleAllocationInfo,
    IdleReport,
    Series,
    SeriesPage,
    SeriesPoint,
)
from gpupool.server.gpu_runtime import GpuRuntime
from gpupool.server.services import gpus as gpu_services
from gpupool.server.services.auth import Principal
from gpupool.server.services.workloads import visible_workload
from gpupool.store.orm import WorkloadRow
from gpupool.store.repos import accounts, nodes
from gpupool.store.repos import gpus as gpu_repo
from gpupool.store.repos import workloads as repo

DEFAULT_WINDOW_S = 3600.0
MAX_POINTS = 5000


def _workloads(session: Session, ids: Iterable[int]) -> dict[int, WorkloadRow]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    return {row.id: row for row in session.scalars(select(WorkloadRow).where(WorkloadRow.id.in_(wanted)))}


def _users_by_gpu(session: Session, principal: Principal) -> dict[tuple[str, int], list[GpuUser]]:
    live = repo.live_replicas(session)
    rows = _workloads(session, (r.workload_id for r in live))
    projects = accounts.project_names_kept(session)
    users: dict[tuple[str, int], list[GpuUser]] = defaultdict(list)
    for replica in live:
        row = rows.get(replica.workload_id)
        if row is None:
            continue
        for g in replica.placement.get("gpus", []):
            users[(replica.node, int(g["index"]))].append(GpuUser(
                workload_id=row.id if principal.can_read(row.project_id) else None,
                project=projects.get(row.project_id, "?"), replica=replica.number, milli=int(g["milli"]),
                memory_mib=int(g.get("memory_mib", 0)), mig_instance=g.get("mig_instance")))
    return users


def gpu_table(session: Session, runtime: GpuRuntime, principal: Principal) -> list[GpuNow]:
    """Every GPU of every node: its latest reading (None before the first sample), health, and the replicas
    holding it with the GPU memory their processes use."""
    users = _users_by_gpu(session, principal)
    settings = gpu_repo.all_settings(session)
    with runtime.reading():
        reports = {name: node.last_report for name, node in runtime.nodes.items()}
    table = []
    for row in nodes.list_nodes(session):
        report = reports.get(row.name)
        own = settings.get(row.name, {})
        for card in row.gpus:
            index = int(card["index"])
            view = gpu_services.gpu_view(row.name, card, own.get(index), 0, set())
            here = users.get((row.name, index), [])
            table.append(_reading(GpuNow(
                node=row.name, index=index, uuid=view.uuid, model=view.model, mode=view.mode,
                simulated=view.simulated, healthy=view.healthy, health=view.health,
                allocated_milli=sum(u.milli for u in here), users=here), report))
    return table


def _reading(gpu: GpuNow, report: MonitorReport | None) -> GpuNow:
    """`gpu` with the report's reading of its card and each user's memory filled in."""
    if report is None:
        return gpu
    reading = next((r for r in report.gpus if r.index == gpu.index), None)
    used = {(u.replica.workload_id, u.replica.replica): u.memory_bytes for u in report.usage
            if u.gpu_index == gpu.index}
    users = [u.model_copy(update={"memory_used_bytes": used.get((str(u.workload_id), u.replica))})
             if u.workload_id is not None else u for u in gpu.users]
    unowned = sum(p.memory_bytes or 0 for p in report.unowned if p.gpu_index == gpu.index)
    servers = sum(p.memory_bytes or 0 for p in report.mps_servers if p.gpu_index == gpu.index)
    update: dict[str, object] = {"sampled_at": report.time, "users": users, "unowned_memory_bytes": unowned,
                                 "mps_server_memory_bytes": servers,
                                 "attribution_note": report.attribution_note or None}
    if reading is not None:
        update |= {"utilization_pct": reading.utilization_pct, "memory_used_bytes": reading.memory_used_bytes,
                   "memory_total_bytes": reading.memory_total_bytes, "power_w": reading.power_w,
                   "temperature_c": reading.temperature_c}
    return gpu.model_copy(update=update)


def _window(now: float, since: float | None, until: float | None, max_points: int | None) -> tuple[float, float]:
    start = since if since is not None else now - DEFAULT_WINDOW_S
    end = until if until is not None else max(now, start)
    if end < start:
        raise ValidationError("until must not be before since", "until")
    if max_points is not None and not 1 <= max_points <= MAX_POINTS:
        raise ValidationError(f"max_points must be 1..{MAX_POINTS}", "max_points")
    return start, end


def _points(runtime: GpuRuntime, key: Hashable, start: float, end: float, max_points: int | None) -> list[SeriesPoint]:
    return [SeriesPoint(t=p.t, mean=p.mean, max=p.max)
            for p in runtime.series.query(key, start, end if math.isfinite(end) else math.inf, max_points)]


def gpu_series(runtime: GpuRuntime, now: float, node: str | None, gpu: int | None, metric: str | None,
               since: float | None, until: float | None, max_points: int | None) -> SeriesPage:
    """Time series of GPUs, filtered by node, GPU index and metric (utilization_pct, memory_used_bytes,
    power_w, temperature_c), between `since` (default: an hour ago) and `until` (default: now)."""
    if metric is not None and metric not in GPU_METRICS:
        raise ValidationError(f"unknown metric {metric!r}; use one of {', '.join(GPU_METRICS)}", "metric")
    start, end = _window(now, since, until, max_points)
    found = []
    with runtime.reading():
        for key in list(runtime.series.keys()):
            if not (isinstance(key, tuple) and len(key) == 4 and key[0] == "gpu"):
                continue
            _, key_node, key_gpu, key_metric = key
            if (node is None or key_node == node) and (gpu is None or key_gpu == str(gpu)) and \
                    (metric is None or key_metric == metric):
                found.append(Series(node=key_node, gpu=int(key_gpu), metric=key_metric,
                                    points=_points(runtime, key, start, end, max_points)))
    found.sort(key=lambda s: (s.node, s.gpu or 0, s.metric))
    return SeriesPage(since=start, until=end, series=found)


def workload_series(session: Session, runtime: GpuRuntime, principal: Principal, workload_id: int, now: float,
                    since: float | None, until: float | None, max_points: int | None) -> SeriesPage:
    """The GPU memory of a workload's processes over time, per node (readers of its project)."""
    visible_workload(session, principal, workload_id)
    start, end = _window(now, since, until, max_points)
    found = []
    with runtime.reading():
        for key in list(runtime.series.keys()):
            if isinstance(key, tuple) and len(key) == 4 and key[0] == "workload" and key[1] == str(workload_id):
                found.append(Series(node=key[2], workload_id=workload_id, metric=key[3],
                                    points=_points(runtime, key, start, end, max_points)))
    found.sort(key=lambda s: s.node)
    return SeriesPage(since=start, until=end, series=found)


def idle_report(session: Session, runtime: GpuRuntime, principal: Principal, now: float) -> IdleReport:
    """Allocations whose GPU has been idle longer than the threshold, longest first (administrators)."""
    principal.require_admin("see the wasted-GPU report")
    with runtime.reading():
        idle = [(name, item) for name, node in sorted(runtime.nodes.items()) for item in node.monitor.wasted(now)]
    rows = _workloads(session, (int(i.replica.workload_id) for _, i in idle if i.replica.workload_id.isdigit()))
    projects = accounts.project_names_kept(session)
    users = accounts.user_names(session, {r.user_id for r in rows.values()})
    found = []
    for node, item in idle:
        row = rows.get(int(item.replica.workload_id)) if item.replica.workload_id.isdigit() else None
        if row is None:
            continue
        found.append(IdleAllocationInfo(
            node=node, gpu=item.gpu_index, workload_id=row.id, workload=row.name,
            project=projects.get(row.project_id, "?"), user=users.get(row.user_id, "?"), replica=item.replica.replica,
            milli=item.milli, idle_since=item.idle_since, idle_for_s=item.idle_for_s))
    found.sort(key=lambda i: (-i.idle_for_s, i.node, i.gpu, i.workload_id))
    settings = runtime.settings
    return IdleReport(threshold_s=settings.idle_after_s, idle_max_pct=settings.idle_max_pct,
                      wasted_gpu_milli=sum(i.milli for i in found), allocations=found)
