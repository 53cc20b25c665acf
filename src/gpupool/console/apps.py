"""Console pages of notebooks: state, GPU, idle for, culls in; open through a one-time link, stop, start.
(Services are in `service_pages`.)

The paths of actions are singular (`/notebook/{id}/stop`): `/notebooks/{id}/...` is the notebook proxy."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import RedirectResponse, Response

from gpupool.console.guard import guard, guard_form
from gpupool.console.web import Caller, NavItem, page, register_page, services_of
from gpupool.domain.errors import ValidationError
from gpupool.server.api import schemas
from gpupool.server.services import notebooks
from gpupool.store.repos import accounts

router = APIRouter(include_in_schema=False)
register_page(NavItem("/notebooks", "Notebooks", also=("/notebook/",)), after="/workloads")
NotebookId = Annotated[int, Path(ge=1, le=schemas.MAX_ID)]


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
