"""Console pages of services: the list (state, models, replicas, load, requests) and a service (replicas on
their GPUs, scale bounds, traffic, revision history with update and rollback, history).

The paths of actions are singular (`/service/{name}/scale`): `/services/{name}/...` is the gateway. Scaling,
updating and rolling back call the same service functions and permission checks as `gpupool service
scale|update|rollback`: a viewer of the project sees the page but no forms, and is refused (403)."""

from __future__ import annotations

from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Path, Request
from fastapi.responses import RedirectResponse, Response

from gpupool.api.service_schemas import MAX_SERVICE_REPLICAS, ScaleRequest
from gpupool.console.guard import guard, guard_form
from gpupool.console.revisions import history
from gpupool.console.traffic import RATE_WINDOW_MIN, bound_text, rate_charts, traffic
from gpupool.console.web import Caller, NavItem, page, register_page, services_of, templates
from gpupool.domain.errors import ValidationError
from gpupool.server.api import schemas
from gpupool.server.gateway import Gateway
from gpupool.server.services import inference
from gpupool.server.services import workloads as workload_service
from gpupool.store.repos import accounts
from gpupool.store.repos import services as services_repo
from gpupool.store.repos import workloads as repo

router = APIRouter(include_in_schema=False)
register_page(NavItem("/services", "Services", also=("/service/",)), after="/notebooks")
templates.filters["bound"] = bound_text
ServiceName = Annotated[str, Path(min_length=1, max_length=63)]


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


@router.get("/services")
def service_list(request: Request) -> Response:
    """Running services the caller may see: state, models, replicas ready of live, bounds, load, requests."""

    def build(who: Caller) -> Response:
        services, gateway = services_of(request), _gateway(request)
        with services.db.session(write=False) as session:
            items = inference.list_services(session, gateway, who.principal)
            project_ids = {name: pid for pid, name in accounts.project_names(session).items()}
        counts = {s.id: traffic(gateway.metrics.registry, project_ids.get(s.project, -1), s.name) for s in items}
        return page(request, "services.html", who, items=items, counts=counts)

    return guard(request, build)


@router.get("/service/{name}")
def service_detail(request: Request, name: ServiceName) -> Response:
    """One service: replicas (state, node, GPUs, ready), scale bounds, the gateway's request counts and latency,
    its revisions (what each changed; update and rollback for its project's members) and its history."""
    return guard(request, lambda who: _service_page(request, who, name))


def _service_page(
    request: Request, who: Caller, name: str, status: int = 200, error: str | None = None, draft: str | None = None
) -> Response:
    """The service page; after a refused update, with its error and the YAML as the caller sent it."""
    services, gateway = services_of(request), _gateway(request)
    with services.db.session(write=False) as session:
        detail = inference.show(session, gateway, who.principal, name)
        row = inference.find(session, who.principal, name)
        stored = [(r.revision, r.created_at, r.reason, r.spec) for r in services_repo.revisions_of(session, row.id)]
        placed = {}
        for r in detail.replica_list:
            child = repo.workload_by_id(session, r.workload_id)
            attempt = child.attempt if child else None
            placed[r.workload_id] = [
                workload_service.replica_view(x) for x in repo.replicas_of(session, r.workload_id, attempt)
            ]
        may_act = who.principal.can_write(row.project_id)
        spec, submitted_at, project_id = dict(row.spec), row.submitted_at, row.project_id
    revisions = history(stored, submitted_at, spec)
    now = services.clock()
    per_minute = gateway.traffic.series(services.db, detail.id, now - RATE_WINDOW_MIN * 60.0)
    rates = rate_charts(per_minute, now, detail.name)
    return page(
        request,
        "service.html",
        who,
        status=status,
        s=detail,
        placed=placed,
        may_scale=may_act,
        revision=revisions[0].revision,
        revisions=revisions,
        draft=draft if draft is not None else _editable_yaml(spec),
        error=error,
        counts=traffic(gateway.metrics.registry, project_id, detail.name),
        rates=rates,
        rate_hours=RATE_WINDOW_MIN // 60,
    )


def _editable_yaml(spec: dict[str, Any]) -> str:
    """The current spec as the update editor starts from (the queue is the project's; it is not edited)."""
    return str(yaml.safe_dump({k: v for k, v in spec.items() if k != "queue"}, sort_keys=False))


@router.post("/service/{name}/scale")
async def service_scale(request: Request, name: ServiceName) -> Response:
    """Set the replica bounds (as `gpupool service scale`): members of its project; min <= max."""

    def build(who: Caller, fields: dict[str, str]) -> Response:
        services = services_of(request)
        body = ScaleRequest(min=_bound(fields, "min", 0), max=_bound(fields, "max", 1))
        with services.db.session() as session:
            inference.scale(session, who.principal, name, body, services.clock())
        _gateway(request).wake_autoscaler()
        return RedirectResponse(f"/service/{name}", status_code=303)

    return await guard_form(request, build)


@router.post("/service/{name}/update")
async def service_update(request: Request, name: ServiceName) -> Response:
    """Roll out a new spec from the YAML editor (as `gpupool service update`): a new revision; a spec that
    is refused shows the service page again with the error and the YAML kept (nothing changes)."""

    def build(who: Caller, fields: dict[str, str]) -> Response:
        services = services_of(request)
        text = fields.get("spec_yaml", "")
        try:
            data = workload_service.load_spec_input(schemas.SubmitRequest(spec_yaml=text))
            with services.db.session() as session:
                inference.update(session, who.principal, name, data, services.clock(), feasibility=services.feasibility)
        except ValidationError as refused:
            return _service_page(request, who, name, status=422, error=refused.message, draft=text)
        _gateway(request).wake_autoscaler()
        return RedirectResponse(f"/service/{name}#revisions", status_code=303)

    return await guard_form(request, build)


@router.post("/service/{name}/rollback")
async def service_rollback(request: Request, name: ServiceName) -> Response:
    """Go back to the spec before the current one, as a new revision (as `gpupool service rollback`)."""

    def build(who: Caller, _fields: dict[str, str]) -> Response:
        services = services_of(request)
        with services.db.session() as session:
            inference.rollback(session, who.principal, name, services.clock(), services.feasibility)
        _gateway(request).wake_autoscaler()
        return RedirectResponse(f"/service/{name}#revisions", status_code=303)

    return await guard_form(request, build)


def _bound(fields: dict[str, str], key: str, lowest: int) -> int | None:
    text = fields.get(key, "").strip()
    if not text:
        return None
    if not text.isdigit() or not lowest <= int(text) <= MAX_SERVICE_REPLICAS:
        raise ValidationError(
            f"{key} must be a whole number from {lowest} to {MAX_SERVICE_REPLICAS} (got {text!r})", key
        )
    return int(text)
