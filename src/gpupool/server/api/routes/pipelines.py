"""Pipelines: submit a definition, start runs, list and show runs, retry, cancel, pause and resume."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from sqlalchemy.orm import Session

from gpupool.api import pipeline_schemas as ps
from gpupool.executors.storage import StorageLayout
from gpupool.server.api import schemas
from gpupool.server.api.deps import PrincipalDep, ServicesDep
from gpupool.server.context import Services
from gpupool.server.services import pipelines
from gpupool.server.services.schedules import next_fire

router = APIRouter(tags=["pipelines"])
ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": schemas.ErrorBody} for code in (401, 403, 404, 409, 422)}
RunId = Annotated[int, Path(ge=1, le=schemas.MAX_ID, description="The run id (a workload of kind pipeline)")]
Name = Annotated[str, Path(max_length=63, description="The pipeline's name")]
ProjectQuery = Annotated[str | None, Query(max_length=63, description="The project, when the name is in several")]


def _wake(services: Services) -> None:
    if services.pipelines is not None:
        services.pipelines.wake()


@router.post("/pipelines", response_model=ps.PipelineSubmitted, status_code=201, responses=ERRORS)
def submit(body: ps.PipelineSubmit, services: ServicesDep, principal: PrincipalDep) -> ps.PipelineSubmitted:
    """Store a pipeline definition (replacing the one of the same name in the project); with `run`, start
    a run of it too."""
    storage = StorageLayout(services.settings.home)

    def work(session: Session) -> ps.PipelineSubmitted:
        now = services.clock()
        row = pipelines.submit_pipeline(session, principal, body, now, next_fire)
        run = None
        if body.run:
            run, _ = pipelines.start_run(session, row, principal.user_id, {}, now, body.idempotency_key)
        return ps.PipelineSubmitted(pipeline=pipelines.pipeline_view(session, row),
                                    run=pipelines.run_view(session, run, storage) if run is not None else None)

    answer = services.db.transaction(work)
    _wake(services)
    return answer


@router.get("/pipelines/{name}", response_model=ps.PipelineInfo, responses=ERRORS)
def show_pipeline(name: Name, services: ServicesDep, principal: PrincipalDep,
                  project: ProjectQuery = None) -> ps.PipelineInfo:
    """A pipeline definition: spec, schedule state and its latest fires (ran or skipped, and why)."""
    with services.db.session(write=False) as session:
        return pipelines.pipeline_view(session, pipelines.pipeline_by_name(session, principal, name, project))


@router.post("/pipelines/{name}/runs", response_model=ps.RunInfo, status_code=201, responses=ERRORS)
def run(name: Name, body: ps.RunRequest, response: Response, services: ServicesDep,
        principal: PrincipalDep) -> ps.RunInfo:
    """Start a run, with params overriding the pipeline's. 200 when an idempotency key returned an earlier run."""
    storage = StorageLayout(services.settings.home)

    def work(session: Session) -> tuple[ps.RunInfo, bool]:
        row = pipelines.pipeline_by_name(session, principal, name, body.project, for_update=True)
        pipelines.require_write(principal, row.project_id, "start pipeline runs")
        found, created = pipelines.start_run(session, row, principal.user_id, body.params, services.clock(),
                                             body.idempotency_key)
        return pipelines.run_view(session, found, storage), created

    info, created = services.db.transaction(work)
    if not created:
        response.status_code = 200
    _wake(services)
    return info


@router.get("/pipelines/{name}/runs", response_model=ps.RunPage, responses=ERRORS)
def runs(name: Name, services: ServicesDep, principal: PrincipalDep, project: ProjectQuery = None,
         limit: Annotated[int, Query(ge=1, le=pipelines.MAX_RUNS_LISTED)] = 20) -> ps.RunPage:
    """The newest runs of a pipeline first, with their steps."""
    with services.db.session(write=False) as session:
        return pipelines.list_runs(session, principal, name, project, limit, StorageLayout(services.settings.home))


@router.post("/pipelines/{name}/pause", response_model=ps.PipelineInfo, responses=ERRORS)
def pause(name: Name, services: ServicesDep, principal: PrincipalDep, project: ProjectQuery = None) -> ps.PipelineInfo:
    """Pause the pipeline's schedule (no fires until resumed; runs already started go on)."""
    return services.db.transaction(lambda session: pipelines.pipeline_view(session, pipelines.set_paused(
        session, principal, name, project, True, services.clock(), next_fire)))


@router.post("/pipelines/{name}/resume", response_model=ps.PipelineInfo, responses=ERRORS)
def resume(name: Name, services: ServicesDep, principal: PrincipalDep,
           project: ProjectQuery = None) -> ps.PipelineInfo:
    """Resume the pipeline's schedule; the next fire counts from now (paused fires are not caught up)."""
    return services.db.transaction(lambda session: pipelines.pipeline_view(session, pipelines.set_paused(
        session, principal, name, project, False, services.clock(), next_fire)))


@router.get("/pipeline-runs/{run_id}", response_model=ps.RunInfo, responses=ERRORS)
def show_run(run_id: RunId, services: ServicesDep, principal: PrincipalDep) -> ps.RunInfo:
    """One run: status, params, run directory, and each step's state, reason, workload and outputs."""
    with services.db.session(write=False) as session:
        run = pipelines.visible_run(session, principal, run_id)
        return pipelines.run_view(session, run, StorageLayout(services.settings.home))


@router.post("/pipeline-runs/{run_id}/retry", response_model=ps.RunInfo, status_code=201, responses=ERRORS)
def retry(run_id: RunId, response: Response, services: ServicesDep, principal: PrincipalDep) -> ps.RunInfo:
    """Retry a failed or cancelled run from its failed steps, as a new run sharing its directory; the steps
    that succeeded are kept. 200 when this run was already retried (the same new run is returned)."""
    storage = StorageLayout(services.settings.home)

    def work(session: Session) -> tuple[ps.RunInfo, bool]:
        found, created = pipelines.retry_run(session, principal, run_id, services.clock())
        return pipelines.run_view(session, found, storage), created

    info, created = services.db.transaction(work)
    if not created:
        response.status_code = 200
    _wake(services)
    return info


@router.post("/pipeline-runs/{run_id}/cancel", response_model=ps.RunInfo, responses=ERRORS)
def cancel(run_id: RunId, services: ServicesDep, principal: PrincipalDep) -> ps.RunInfo:
    """Cancel a run and every step of it (waiting steps never start; running ones are stopped)."""
    storage = StorageLayout(services.settings.home)
    info = services.db.transaction(lambda session: pipelines.run_view(
        session, pipelines.cancel_run(session, principal, run_id, services.clock()), storage))
    _wake(services)
    return info
