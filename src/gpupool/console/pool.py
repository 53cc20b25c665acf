"""Console pages of the pool: the overview (GPUs, the 24-hour chart, queues, pending reasons), nodes and GPUs
(with the administrators' sharing-mode and MIG changes), queues (quota changes) and usage accounting."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response

from gpupool.console.charts import activity_chart
from gpupool.console.guard import guard, guard_form
from gpupool.console.overview import gpu_totals, pending_reasons, queue_bars
from gpupool.console.web import Caller, page, services_of
from gpupool.server.api import schemas
from gpupool.server.services import cordon, gpu_admin, monitoring, pool, usage
from gpupool.server.services.pool import UNSET

router = APIRouter(include_in_schema=False)
DAY_S = 86_400.0


@router.get("/")
def overview(request: Request) -> Response:
    """GPUs total / allocated / busy / allocated-but-idle by node and model, the last 24 hours as a chart,
    queues as bars (usage vs guarantee vs limit), and why work is pending."""
    def build(who: Caller) -> Response:
        services = services_of(request)
        runtime, now = services.gpu_runtime(), services.clock()
        with services.db.session(write=False) as session:
            gpus = monitoring.gpu_table(session, runtime, who.principal)
            queues = pool.list_queues(session)
            reasons, pending = pending_reasons(session, who.principal)
            chart = activity_chart(session, runtime, now - DAY_S, now)
        idle_pct = runtime.settings.idle_max_pct
        return page(request, "overview.html", who, totals=gpu_totals(gpus, idle_pct), queues=queue_bars(queues),
                    reasons=reasons, pending=pending, chart=chart, idle_pct=idle_pct)
    return guard(request, build)


@router.get("/nodes")
def nodes(request: Request) -> Response:
    """Every node and every card: model, mode, MIG layout, allocation, utilisation, memory, health, users."""
    def build(who: Caller) -> Response:
        services = services_of(request)
        with services.db.session(write=False) as session:
            node_list = pool.list_nodes(session)
            gpus = monitoring.gpu_table(session, services.gpu_runtime(), who.principal)
            cordoned = {name: (row.reason, row.by_user, row.since) for name, row in cordon.cordons(session).items()}
        now = {(g.node, g.index): g for g in gpus}
        return page(request, "nodes.html", who, nodes=node_list, now=now, modes=("exclusive", "shared", "mps", "mig"),
                    cordoned=cordoned)
    return guard(request, build)


NodeName = Annotated[str, Path(max_length=63)]
GpuIndex = Annotated[int, Path(ge=0, le=1023)]


@router.post("/nodes/{node}/gpus/{index}")
async def change_gpu(request: Request, node: NodeName, index: GpuIndex) -> Response:
    """Change a card's sharing mode, or its MIG layout when `mig_layout` is given (administrators)."""
    def build(who: Caller, fields: dict[str, str]) -> Response:
        services = services_of(request)
        runtime = services.gpu_runtime()
        if fields.get("mig_layout", "").strip():
            gpu_admin.set_mig(services.db, runtime, who.principal, node, index, fields["mig_layout"].strip(),
                              services.clock)
        else:
            gpu_admin.set_sharing(services.db, runtime, who.principal, node, index, fields.get("mode", ""),
                                  services.clock())
        services.wake_scheduler()
        return RedirectResponse("/nodes", status_code=303)
    return await guard_form(request, build)


@router.post("/nodes/{node}/{action}")
async def node_action(request: Request, node: NodeName, action: Literal["cordon", "uncordon", "drain"]) -> Response:
    """Cordon, uncordon or drain a node (administrators)."""
    def build(who: Caller, fields: dict[str, str]) -> Response:
        services = services_of(request)
        with services.db.session() as session:
            if action == "cordon":
                cordon.cordon(session, who.principal, node, fields.get("reason", ""), services.clock())
            elif action == "uncordon":
                cordon.uncordon(session, who.principal, node)
            else:
                cordon.drain(session, who.principal, node, services.clock())
        services.wake_reconciler()
        services.wake_scheduler()
        return RedirectResponse("/nodes", status_code=303)
    return await guard_form(request, build)


@router.get("/queues")
def queues(request: Request) -> Response:
    """Every queue: guarantee, limit, weight, lending, usage, running and pending; administrators edit."""
    def build(who: Caller) -> Response:
        services = services_of(request)
        with services.db.session(write=False) as session:
            listed = pool.list_queues(session)
        return page(request, "queues.html", who, queues=listed, bars=queue_bars(listed))
    return guard(request, build)


@router.post("/queues/{name}")
async def update_queue(request: Request, name: NodeName) -> Response:
    """Change a queue's GPU/CPU/memory guarantee and limit, weight and lending (administrators; the API's
    validation: a bad amount or a guarantee above the limit is shown, nothing changes)."""
    def build(who: Caller, fields: dict[str, str]) -> Response:
        services = services_of(request)
        guaranteed = {r: _amount(fields[f"guaranteed_{r}"]) for r in ("cpu", "memory", "gpu")
                      if f"guaranteed_{r}" in fields}
        limit = {r: _amount(fields[f"limit_{r}"]) for r in ("cpu", "memory", "gpu") if f"limit_{r}" in fields}
        weight = float(fields["weight"]) if fields.get("weight", "").strip() else None
        body = schemas.QueueUpdate(guaranteed=guaranteed or None, limit=limit or None, weight=weight,
                                   lend=fields.get("lend") == "on" if "lend_present" in fields else None)
        with services.db.session() as session:
            pool.update_queue(session, who.principal, name, body, services.clock())
        services.wake_scheduler()
        return RedirectResponse("/queues", status_code=303)
    return await guard_form(request, build)


def _amount(text: str) -> str | int | float:
    """A form's amount as the API takes it: a number as a number, "16GiB" as text, empty as "-" (none)."""
    text = text.strip()
    if not text:
        return UNSET
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() else value


@router.get("/usage")
def usage_page(request: Request, by: Literal["project", "user"] = "project",
               period: Literal["day", "week", "month"] = "day",
               since: Annotated[str, Query(max_length=16)] = "30d",
               format: Literal["html", "csv"] = "html") -> Response:
    """GPU-hours allocated, busy and idle per project or user per period; `format=csv` downloads them."""
    def build(who: Caller) -> Response:
        services = services_of(request)
        with services.db.session(write=False) as session:
            report = usage.usage_report(session, services.gpu_runtime(), who.principal, services.clock(), by=by,
                                        period=period, since=since)
        if format == "csv":
            return PlainTextResponse(usage.usage_csv(report), media_type="text/csv; charset=utf-8",
                                     headers={"content-disposition": 'attachment; filename="gpupool-usage.csv"'})
        return page(request, "usage.html", who, report=report, by=by, period=period, since=since)
    return guard(request, build)
