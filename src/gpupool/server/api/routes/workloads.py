"""Workloads: submit, list, show, cancel, logs."""

from __future__ import annotations

from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session

from gpupool.domain.arrays import ARRAY_KIND, MAX_ARRAY_INDEX
from gpupool.server.api import schemas
from gpupool.server.api.deps import PrincipalDep, ServicesDep
from gpupool.server.context import Services
from gpupool.server.services import arrays, notebooks, workload_batch, workloads
from gpupool.server.services.auth import Principal
from gpupool.store.orm import EventRow, WorkloadRow

router = APIRouter(prefix="/workloads", tags=["workloads"])
ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": schemas.ErrorBody} for code in (401, 403, 404, 409, 422)}
WorkloadId = Annotated[int, Path(ge=1, le=schemas.MAX_ID, description="The workload id")]



@router.post("", response_model=schemas.WorkloadSubmitted, status_code=201, responses=ERRORS)
async def submit(body: schemas.SubmitRequest, services: ServicesDep, principal: PrincipalDep) -> Response:
    """Submit a workload spec (YAML text or an object). 201 when created; 200 when an idempotency key
    returned the workload an earlier submit created."""
    return await to_thread.run_sync(_submit, body, services, principal, limiter=services.submit_limiter())


def _submit(body: schemas.SubmitRequest, services: Services, principal: Principal) -> Response:
    services.hold_while_scheduler_behind()
    spec = workloads.prepare_submission(body)  # before the transaction: parsing holds no lock
    # The reads (project, queue, never-fits: most answered from the setup cache; the idempotency key only when
    # the insert finds it taken or the spec is refused) share the write
    # transaction on both stores: one transaction fewer per submit costs less than the write lock held a
    # little longer on SQLite (benchmarks/control_plane/README.md). A batch reads before (its reads grow with it).
    # Several submits waiting for the write lock at once share one transaction (store/group_commit.py)
    def store(session: Session) -> tuple[workloads.SubmitPlan, WorkloadRow, bool, dict[int, list[EventRow]]]:
        plan = workloads.plan_submission(session, principal, body, spec, services.feasibility, read_key=False)
        row, created = workloads.submit(session, principal, body, services.clock(), services.feasibility,
                                        prepared=spec, plan=plan)
        return plan, row, created, workloads.submitted_events(session)

    plan, row, created, written = services.submit_group().run(store)
    if created:
        services.wake_scheduler()
    return json_answer(_answers([(row, created)], services, principal, [plan], written)[0], 201 if created else 200)


@router.post("/batch", response_model=schemas.BatchSubmitted, status_code=201, responses=ERRORS)
async def submit_batch(body: schemas.SubmitBatchRequest, services: ServicesDep, principal: PrincipalDep) -> Response:
    """Submit several specs at once (each item as for a single submit), in one transaction: all are stored,
    or none when one is refused (the error names the item, e.g. `items[3].resources`). 201 when any item
    created a workload; 200 when every item was an idempotent replay."""
    return await to_thread.run_sync(_submit_batch, body, services, principal, limiter=services.submit_limiter())


def _submit_batch(body: schemas.SubmitBatchRequest, services: Services, principal: Principal) -> Response:
    services.hold_while_scheduler_behind()
    specs = workload_batch.prepare_batch(body.items)  # every item is checked before the transaction
    plans = None
    if services.db.is_sqlite:  # and read for before it on SQLite (one writer), checked again inside
        with services.db.session(write=False) as session:
            plans = workload_batch.plan_batch(session, principal, body.items, specs, services.feasibility)
    with services.db.session() as session:
        if plans is None:
            plans = workload_batch.plan_batch(session, principal, body.items, specs, services.feasibility)
        stored = workload_batch.submit_batch(session, principal, body.items, specs, services.clock(),
                                             services.feasibility, plans)
        written = workloads.submitted_events(session)
    created = any(created for _, created in stored)
    if created:
        services.wake_scheduler()
    return json_answer(schemas.BatchSubmitted(items=_answers(stored, services, principal, plans, written)),
                       201 if created else 200)


def json_answer(answer: BaseModel, status: int) -> Response:
    """`answer` as the JSON the route's response_model would give, sent as is: FastAPI would otherwise check
    the model again in a worker thread (one more hand-off per request) before serialising it."""
    return Response(answer.model_dump_json(by_alias=True), status_code=status, media_type="application/json")


def _answers(stored: list[tuple[WorkloadRow, bool]], services: Services, principal: Principal,
             plans: list[workloads.SubmitPlan], written: dict[int, list[EventRow]]) -> list[schemas.WorkloadSubmitted]:
    """The answer for each stored workload. A job created by this request is shown from what its
    transaction wrote (`written`: its first events; the names from the plan and the caller), as it stood
    at the commit; anything else (a replay, an array, a notebook, a plan made again for another project) is
    read after the commit in one read-only transaction, which on SQLite does not hold the write lock."""
    answers: list[schemas.WorkloadSubmitted | None] = [
        _fresh_answer(row, _names(row, principal, plan), written.get(row.id), plan) if created else None
        for (row, created), plan in zip(stored, plans, strict=True)]
    if all(answer is not None for answer in answers):
        return [answer for answer in answers if answer is not None]
    with services.db.session(write=False) as session:
        return [answer or schemas.WorkloadSubmitted(
                    workload=workloads.detail_view(session, row, tasks=0, names=_names(row, principal, plan)),
                    created=created,
                    warnings=workloads.submission_warnings(session, row, plan) + notebooks.cap_warning(session, row))
                for answer, (row, created), plan in zip(answers, stored, plans, strict=True)]


def _fresh_answer(row: WorkloadRow, names: tuple[str, str] | None, events: list[EventRow] | None,
                  plan: workloads.SubmitPlan) -> schemas.WorkloadSubmitted | None:
    """The answer for a job this request created, from what it wrote; None when it must be read instead."""
    if names is None or events is None or row.kind in (ARRAY_KIND, notebooks.KIND) or row.queue != plan.queue:
        return None
    return schemas.WorkloadSubmitted(workload=workloads.fresh_detail_view(row, names, events), created=True,
                                     warnings=workloads.limit_warning(row.id, plan.over_limit))


def _names(row: WorkloadRow, principal: Principal, plan: workloads.SubmitPlan) -> tuple[str, str] | None:
    """The (project, user) names of a submitted workload when the plan and the caller are its own (a plan made
    again inside the write transaction may name another project: then None, and the view reads them)."""
    if row.project_id == plan.project_id and row.user_id == principal.user_id:
        return plan.project_name, principal.name
    return None


@router.get("", response_model=schemas.WorkloadPage, responses=ERRORS)
def list_workloads(services: ServicesDep, principal: PrincipalDep,
                   project: Annotated[str | None, Query(max_length=63)] = None,
                   status: Annotated[list[str] | None, Query(max_length=16)] = None,
                   name: Annotated[str | None, Query(max_length=63)] = None,
                   limit: Annotated[int, Query(ge=1, le=workloads.MAX_LIST)] = 50,
                   before_id: Annotated[int | None, Query(ge=1, le=schemas.MAX_ID)] = None,
                   kind: Annotated[str | None, Query(max_length=16)] = None,
                   user: Annotated[str | None, Query(max_length=63)] = None) -> schemas.WorkloadPage:
    """Workloads you may see, newest first (filtered by project, status, name, kind and user), with each pending
    one's reason and queue position."""
    with services.db.session(write=False) as session:
        return workloads.list_workloads(session, principal, project, status or [], name, limit, before_id,
                                         kind, user)


@router.get("/{workload_id}", response_model=schemas.WorkloadDetail, responses=ERRORS)
def show(workload_id: WorkloadId, services: ServicesDep, principal: PrincipalDep,
         tasks: Annotated[int, Query(ge=0, le=workloads.MAX_LIST, description="A job array's first tasks to "
                                     "include (0: none; `/tasks` pages on)")] = workloads.DETAIL_TASKS,
         ) -> schemas.WorkloadDetail:
    """One workload: status, why it waits, its replicas and history; a job array's counts by status and its
    first `tasks` tasks."""
    with services.db.session(write=False) as session:
        return workloads.detail_view(session, workloads.visible_workload(session, principal, workload_id), tasks)


@router.get("/{workload_id}/tasks", response_model=schemas.ArrayTaskPage, responses=ERRORS)
def array_tasks(workload_id: WorkloadId, services: ServicesDep, principal: PrincipalDep,
                limit: Annotated[int, Query(ge=1, le=workloads.MAX_LIST)] = 100,
                after: Annotated[int | None, Query(ge=0, le=MAX_ARRAY_INDEX, description="Tasks with a higher "
                                                   "index (the previous page's next_after)")] = None,
                status: Annotated[list[str] | None, Query(max_length=16)] = None) -> schemas.ArrayTaskPage:
    """A page of job array `workload_id`'s tasks in index order (only those in `status`, when given);
    `next_after` asks for the next page."""
    with services.db.session(write=False) as session:
        array = workloads.visible_workload(session, principal, workload_id)
        arrays.require_array(array)
        return arrays.task_page(session, array.id, limit, after, status or [])


@router.get("/{workload_id}/tasks/{index}", response_model=schemas.WorkloadDetail, responses=ERRORS)
def array_task(workload_id: WorkloadId, index: Annotated[int, Path(ge=0, le=MAX_ARRAY_INDEX)],
               services: ServicesDep, principal: PrincipalDep) -> schemas.WorkloadDetail:
    """Task `index` of job array `workload_id` (an ordinary workload of its own: cancel it or read its logs by
    its id)."""
    with services.db.session(write=False) as session:
        array = workloads.visible_workload(session, principal, workload_id)
        return workloads.detail_view(session, arrays.task_row(session, array, index))


@router.post("/{workload_id}/cancel", response_model=schemas.WorkloadDetail, responses=ERRORS)
def cancel(workload_id: WorkloadId, services: ServicesDep, principal: PrincipalDep) -> schemas.WorkloadDetail:
    """Cancel a workload; running replicas are stopped (SIGTERM, then SIGKILL after the grace period)."""
    detail = services.db.transaction(lambda session: workloads.detail_view(
        session, workloads.cancel(session, principal, workload_id, services.clock()), tasks=0))
    services.wake_reconciler()
    services.wake_scheduler()
    return detail


@router.get("/{workload_id}/logs", response_class=StreamingResponse, responses={
    200: {"content": {"text/plain": {}}, "description": "The replica's output, one line per line"}, **ERRORS})
def logs(workload_id: WorkloadId, services: ServicesDep, principal: PrincipalDep,
         replica: Annotated[int, Query(ge=0, le=100_000)] = 0,
         tail: Annotated[int | None, Query(ge=0, le=workloads.MAX_TAIL)] = None,
         follow: bool = False,
         attempt: Annotated[int | None, Query(ge=1, le=100_000, description="Which run (1 is the first); "
                                              "default the current one")] = None) -> StreamingResponse:
    """A replica's output (of the current run, or of run `attempt`); `follow` streams until the replica ends."""
    with services.db.session(write=False) as session:
        chunks = workloads.log_lines(session, principal, workload_id, replica, tail, follow, services.executor,
                                     attempt)
    return StreamingResponse(chunks, media_type="text/plain; charset=utf-8")
