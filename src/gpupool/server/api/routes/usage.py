"""Usage accounting (GPU-hours allocated, busy and idle per project or user per period, as JSON or CSV) and
the dry run of a submission (what the scheduler would do with a spec now)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse

from gpupool.api.usage_schemas import DryRunResult, UsageGrouping, UsagePeriod, UsageReport
from gpupool.server.api import schemas
from gpupool.server.api.deps import PrincipalDep, ServicesDep
from gpupool.server.api.routes.workloads import ERRORS
from gpupool.server.services import dry_run, usage

router = APIRouter(tags=["usage"])
Since = Annotated[str, Query(max_length=16, description="How far back: e.g. 30d, 12h or 90m")]


@router.get("/usage", response_model=UsageReport, responses={
    200: {"content": {"text/csv": {}}, "description": "The report (JSON), or its lines as CSV with format=csv"},
    **ERRORS})
def usage_report(services: ServicesDep, principal: PrincipalDep, by: UsageGrouping = "project",
                 period: UsagePeriod = "day", since: Since = "30d",
                 format: Literal["json", "csv"] = "json") -> UsageReport | PlainTextResponse:
    """GPU-hours allocated, busy and allocated-but-idle per project or user per day, week or month over the
    last `since`; only the projects you may read (administrators: every project)."""
    with services.db.session(write=False) as session:
        report = usage.usage_report(session, services.gpu_runtime(), principal, services.clock(), by=by,
                                    period=period, since=since)
    if format == "csv":
        return PlainTextResponse(usage.usage_csv(report), media_type="text/csv; charset=utf-8",
                                 headers={"content-disposition": 'attachment; filename="gpupool-usage.csv"'})
    return report


@router.post("/workloads/dry-run", response_model=DryRunResult, responses=ERRORS)
def dry_run_submit(body: schemas.SubmitRequest, services: ServicesDep, principal: PrincipalDep) -> DryRunResult:
    """Validate a spec exactly as a submit would and say what the scheduler would do with it now: start it
    (where), preempt for it, keep it waiting (why, its position) or never run it. Nothing is stored."""
    loop = services.scheduling_loop
    if loop is None:
        raise RuntimeError("the scheduling loop is not set up")
    with services.db.session(write=False) as session:
        return dry_run.dry_run(session, principal, body, loop, services.feasibility, services.clock())
