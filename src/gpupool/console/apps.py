"""Console pages of the interactive kinds: notebooks (state, GPU, idle for, culls in; open through a one-time
link, stop, start) and services (replicas, revision, scale bounds, the gateway's request counts and latency).

The paths of actions are singular (`/notebook/{id}/stop`, `/service/{name}/scale`): `/notebooks/{id}/...` is
the notebook proxy and `/services/{name}/...` the gateway."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import RedirectResponse, Response

from gpupool.api.service_schemas import MAX_SERVICE_REPLICAS, ScaleRequest
from gpupool.console.guard import guard, guard_form
from gpupool.console.traffic import bound_text, traffic
from gpupool.console.web import Caller, NavItem, page, register_page, services_of, templates
from gpupool.domain.errors import ValidationError
from gpupool.server.api import schemas
from gpupool.server.gateway import Gateway
from gpupool.server.services import inference, notebooks
from gpupool.server.services import workloads as workload_service
from gpupool.store.repos import accounts
from gpupool.store.repos import services as services_repo
from gpupool.store.repos import workloads as repo

router = APIRouter(include_in_schema=False)
register_page(NavItem("/notebooks", "Notebooks", also=("/notebook/",)), after="/workloads")
register_page(NavItem("/services", "Services", also=("/service/",)), after="/notebooks")
templates.filters["bound"] = bound_text
NotebookId = Annotated[int, Path(ge=1, le=schemas.MAX_ID)]
ServiceName = Annotated[str, Path(min_length=1, max_length=63)]


# ------------------------------------------------------------------------------------------ notebooks
@router.get("/notebooks")
def notebook_list(request: Request, ended: Annotated[bool, Query()] = False) -> Response:
    """The caller's visible notebooks: state, GPU, idle for, culls in; open, stop and start for those they
    may act on (their own in a project where they may submit, or any in a project they administer)."""

    def build(who: Caller) -> Response:
        services = services_of(request)
        culler = services.notebook_culler
        with services.db.session(write=False) as session:
            items = notebooks.list_notebooks(
                session,
                who.principal,
                culler.latest if culler else {},
                services.settings.notebook_idle_timeout,
                include_ended=ended,
            )
            project_ids = {name: pid for pid, name in accounts.project_names(session).items()}
        me = who.principal
        mine = {  # user names are unique, so the name tells the caller's own notebooks (-1: no user's id)
            n.id
            for n in items
            if notebooks.may_act(me, me.user_id if n.user == me.name else -1, project_ids.get(n.project, -1))
        }
        return page(request, "notebooks.html", who, items=items, mine=mine, ended=ended)

    return guard(request, build)


@router.post("/notebook/{workload_id}/open")
async def notebook_open(request: Request, workload_id: NotebookId) -> Response:
    """Open the notebook: a one-time link (as `gpupool notebook open`) the browser follows at once."""

    def build(who: Caller, _fields: dict[str, str]) -> Response:
        services = services_of(request)
        if services.notebook_keys is None:
            raise ValidationError("this server cannot open notebooks (it was built without notebook keys)")
        with services.db.session(write=False) as session:
            link = notebooks.open_link(session, who.principal, workload_id, services.notebook_keys, services.clock())
        return RedirectResponse(link.path, status_code=303)

    return await guard_form(request, build)


@router.post("/notebook/{workload_id}/stop")
async def notebook_stop(request: Request, workload_id: NotebookId) -> Response:
    """Stop a notebook (its GPU freed, its files kept), as `gpupool notebook stop`."""
    return await _notebook_change(request, workload_id, stop=True)


@router.post("/notebook/{workload_id}/start")
async def notebook_start(request: Request, workload_id: NotebookId) -> Response:
    """Start a stopped or culled notebook again (same id, same files), as `gpupool notebook start`."""
    return await _notebook_change(request, workload_id, stop=False)


async def _notebook_change(request: Request, workload_id: int, stop: bool) -> Response:
    def build(who: Caller, _fields: dict[str, str]) -> Response:
        services = services_of(request)
        change = notebooks.stop if stop else notebooks.start
        services.db.transaction(lambda session: change(session, who.principal, workload_id, services.clock()))
        if stop:
            services.wake_workers()
        else:
            services.wake_scheduler()
        return RedirectResponse("/notebooks", status_code=303)

    return await guard_form(request, build)


# ------------------------------------------------------------------------------------------- services
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
    """One service: replicas (state, node, GPUs, ready), revision, scale bounds (a form for its project's
    members), the gateway's request counts and latency, and its history."""

    def build(who: Caller) -> Response:
        services, gateway = services_of(request), _gateway(request)
        with services.db.session(write=False) as session:
            detail = inference.show(session, gateway, who.principal, name)
            row = inference.find(session, who.principal, name)
            revisions = services_repo.revisions_of(session, row.id)
            placed = {}
            for r in detail.replica_list:
                child = repo.workload_by_id(session, r.workload_id)
                attempt = child.attempt if child else None
                placed[r.workload_id] = [
                    workload_service.replica_view(x) for x in repo.replicas_of(session, r.workload_id, attempt)
                ]
            may_scale = who.principal.can_write(row.project_id)
        return page(
            request,
            "service.html",
            who,
            s=detail,
            placed=placed,
            may_scale=may_scale,
            revision=revisions[-1].revision if revisions else 1,
            counts=traffic(gateway.metrics.registry, row.project_id, detail.name),
        )

    return guard(request, build)


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


def _bound(fields: dict[str, str], key: str, lowest: int) -> int | None:
    text = fields.get(key, "").strip()
    if not text:
        return None
    if not text.isdigit() or not lowest <= int(text) <= MAX_SERVICE_REPLICAS:
        raise ValidationError(
            f"{key} must be a whole number from {lowest} to {MAX_SERVICE_REPLICAS} (got {text!r})", key
        )
    return int(text)
