"""Usage accounting: GPU-hours allocated (from the replicas' runs in the store) and busy / idle (from the usage
ledger the sampler writes, plus its counters not flushed yet), per project or user per day, week or month; as a
report or CSV.
The arithmetic is `gpupool.domain.usage.account`; this module gathers its inputs and applies visibility."""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import cast

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from gpupool.api.usage_schemas import UsageGrouping, UsageLine, UsagePeriod, UsageReport
from gpupool.domain.errors import ValidationError
from gpupool.domain.resources import parse_duration
from gpupool.domain.usage import GROUPINGS, PERIODS, Allocation, CardShare, account, merge_ledger
from gpupool.server.gpu_runtime import GpuRuntime
from gpupool.server.services.auth import Principal
from gpupool.store.convert import placement_from_json
from gpupool.store.orm import ReplicaRow, WorkloadRow
from gpupool.store.repos import accounts, usage_ledger

CSV_COLUMNS = ("period_start", "period", "group", "allocated_gpu_h", "busy_gpu_h", "idle_gpu_h",
               "observed_gpu_h", "workloads")


def allocations(session: Session, readable: frozenset[int] | None, since: float, until: float,
                now: float) -> tuple[list[Allocation], list[int]]:
    """The GPU-holding replica runs overlapping [since, until] (a run still going ends `now`) in the projects
    `readable` (None: every project), with the workload id of each."""
    query = (select(ReplicaRow, WorkloadRow.project_id, WorkloadRow.user_id)
             .join(WorkloadRow, ReplicaRow.workload_id == WorkloadRow.id)
             .where(ReplicaRow.started_at.is_not(None), ReplicaRow.started_at <= until,
                    or_(ReplicaRow.ended_at.is_(None), ReplicaRow.ended_at >= since))
             .order_by(ReplicaRow.id))
    if readable is not None:
        query = query.where(WorkloadRow.project_id.in_(sorted(readable)))
    found = session.execute(query).all()
    projects = accounts.project_names_kept(session)
    users = accounts.user_names(session, {user_id for _, _, user_id in found})
    found_allocations: list[Allocation] = []
    ids: list[int] = []
    for replica, project_id, user_id in found:
        placement = placement_from_json(replica.placement)
        cards = tuple(CardShare(placement.node, g.index, g.milli) for g in placement.gpus if g.milli > 0)
        if not cards or replica.started_at is None:
            continue
        end = replica.ended_at if replica.ended_at is not None else now
        found_allocations.append(Allocation(projects.get(project_id, "?"), users.get(user_id, "?"),
                                      replica.started_at, end, cards))
        ids.append(replica.workload_id)
    return found_allocations, ids


def usage_report(session: Session, runtime: GpuRuntime, principal: Principal, now: float, *, by: str = "project",
                 period: str = "day", since: str = "30d") -> UsageReport:
    """GPU-hours per `by` (project or user) per `period` (day, week, month) over the last `since` (e.g. 30d,
    12h), for the projects the caller may read (every project for administrators). Allocated hours are cut
    exactly at `since`; busy / idle / observed hours come from the ledger's hour buckets overlapping the window."""
    if by not in GROUPINGS:
        raise ValidationError(f"unknown grouping {by!r}; use one of {', '.join(GROUPINGS)}", "by")
    if period not in PERIODS:
        raise ValidationError(f"unknown period {period!r}; use one of {', '.join(PERIODS)}", "period")
    start = now - parse_duration(since, "since")
    held, ids = allocations(session, principal.readable_projects(), start, now, now)
    idle_max_pct = runtime.settings.idle_max_pct
    allocated = account(held, {}, ids, by=by, period=period, since=start, until=now, idle_max_pct=idle_max_pct)
    with runtime.ledger.lock:
        entries = usage_ledger.entries(session, principal.readable_projects(), start, now, runtime.ledger.pending())
    rows = merge_ledger(allocated, entries, by=by, period=period)
    lines = [UsageLine(period_start=r.period_start, period=period, group=r.group,
                       allocated_gpu_h=round(r.allocated_gpu_h, 4), busy_gpu_h=round(r.busy_gpu_h, 4),
                       idle_gpu_h=round(r.idle_gpu_h, 4), observed_gpu_h=round(r.observed_gpu_h, 4),
                       workloads=len(r.workloads)) for r in rows]
    return UsageReport(by=cast(UsageGrouping, by), period=cast(UsagePeriod, period), since=start, until=now,
                       idle_max_pct=idle_max_pct, lines=lines,
                       total_allocated_gpu_h=round(sum(r.allocated_gpu_h for r in rows), 4),
                       total_busy_gpu_h=round(sum(r.busy_gpu_h for r in rows), 4),
                       total_idle_gpu_h=round(sum(r.idle_gpu_h for r in rows), 4))


def usage_csv(report: UsageReport) -> str:
    """The report's lines as CSV (a header row, then one row per line; period_start as a UTC date)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for line in report.lines:
        day = dt.datetime.fromtimestamp(line.period_start, dt.UTC).date().isoformat()
        writer.writerow([day, line.period, line.group, line.allocated_gpu_h, line.busy_gpu_h, line.idle_gpu_h,
                         line.observed_gpu_h, line.workloads])
    return out.getvalue()
