"""Notebooks: list (with idle figures), open link, stop, start. Creating one is submitting a `kind: notebook`
spec (POST /workloads); the notebook itself is served under /notebooks/<id>/ by the proxy."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from gpupool.api import notebook_schemas as nb
from gpupool.server.api import schemas
from gpupool.server.api.deps import PrincipalDep, ServicesDep
from gpupool.server.services import notebooks
from gpupool.server.services import workloads as workload_service

router = APIRouter(prefix="/notebooks", tags=["notebooks"])
ERRORS: dict[int | str, dict[str, object]] = {code: {"model": schemas.ErrorBody} for code in (401, 403, 404, 409)}
NotebookId = Annotated[int, Path(ge=1, le=schemas.MAX_ID, description="The notebook's workload id")]


@router.get("", response_model=list[nb.NotebookInfo], responses=ERRORS)
def list_notebooks(services: ServicesDep, principal: PrincipalDep,
                   all: Annotated[bool, Query(description="Include notebooks that ended")] = False,
                   ) -> list[nb.NotebookInfo]:
    """Notebooks you may see, newest first: status, GPU, idle for and culls in (from the culler's last look)."""
    culler = services.notebook_culler
    with services.db.session(write=False) as session:
        return notebooks.list_notebooks(session, principal, culler.latest if culler else {},
                                        services.settings.notebook_idle_timeout, include_ended=all)


@router.post("/{workload_id}/open", response_model=nb.NotebookOpen, responses=ERRORS)
def open_notebook(workload_id: NotebookId, services: ServicesDep, principal: PrincipalDep) -> nb.NotebookOpen:
    """A one-time link that opens the notebook in a browser (owner and project admins)."""
    if services.notebook_keys is None:
        raise RuntimeError("the server was built without notebook keys")
    with services.db.session(write=False) as session:
        return notebooks.open_link(session, principal, workload_id, services.notebook_keys, services.clock())


@router.post("/{workload_id}/stop", response_model=schemas.WorkloadDetail, responses=ERRORS)
def stop(workload_id: NotebookId, services: ServicesDep, principal: PrincipalDep) -> schemas.WorkloadDetail:
    """Stop a notebook: its GPU is freed, its files stay; start brings it back."""
    detail = services.db.transaction(lambda session: workload_service.detail_view(
        session, notebooks.stop(session, principal, workload_id, services.clock())))
    services.wake_workers()
    return detail


@router.post("/{workload_id}/start", response_model=schemas.WorkloadDetail, responses=ERRORS)
def start(workload_id: NotebookId, services: ServicesDep, principal: PrincipalDep) -> schemas.WorkloadDetail:
    """Start a stopped or culled notebook again (same id, same files)."""
    detail = services.db.transaction(lambda session: workload_service.detail_view(
        session, notebooks.start(session, principal, workload_id, services.clock())))
    services.wake_scheduler()
    return detail
