"""Console pages of workloads: the filterable list (pending ones with reason and position), the detail page
(timeline, replicas, live logs, spec), cancel and resubmit, and the new-workload form with its YAML editor."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from typing import Annotated
from urllib.parse import urlencode

import yaml
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse

from gpupool.console.guard import guard, guard_form
from gpupool.console.web import Caller, page, services_of
from gpupool.domain.errors import ConflictError, ValidationError
from gpupool.domain.status import WorkloadStatus
from gpupool.server.api import schemas
from gpupool.server.environments import Viewer
from gpupool.server.services import accounts, dry_run, notebooks, workloads

router = APIRouter(include_in_schema=False)
PAGE = 50  # workloads a list page shows: a few screens, one query; `?limit=` asks for up to MAX_PAGE
MAX_PAGE = 500  # a bound on one page (the API allows 1000): still one quick query and a page a browser renders fast
LOG_TAIL = 2000  # lines of earlier output a page shows before following: a few screens, a bounded response
ARRAY_TASKS_SHOWN = 200  # a job array's tasks its page lists: one table a browser renders at once
KINDS = ("job", "array", "notebook", "service", "pipeline", "sweep")
WorkloadId = Annotated[int, Path(ge=1, le=schemas.MAX_ID)]
Filter = Annotated[str, Query(max_length=63)]


@router.get("/workloads")
def workload_list(request: Request, project: Filter = "", user: Filter = "", kind: Filter = "",
                  status: Filter = "", before: Annotated[int | None, Query(ge=1, le=schemas.MAX_ID)] = None,
                  limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = PAGE) -> Response:
    """Workloads the caller may see, newest first, filtered by project, user, kind and state, a page at a time
    (`before`: only workloads older than this id)."""
    def build(who: Caller) -> Response:
        services = services_of(request)
        with services.db.session(write=False) as session:
            listed = workloads.list_workloads(session, who.principal, project or None, [status] if status else [],
                                              None, limit, before, kind or None, user or None)
        filters = {"project": project, "user": user, "kind": kind, "status": status}
        query = {k: v for k, v in filters.items() if v} | ({"limit": str(limit)} if limit != PAGE else {})
        older = urlencode(query | {"before": str(listed.next_before_id)}) if listed.next_before_id else None
        return page(request, "workloads.html", who, items=listed.items, total=listed.total, filters=filters,
                    statuses=[s.value for s in WorkloadStatus], kinds=KINDS, older=older,
                    first=urlencode(query) if before else None)
    return guard(request, build)


@router.get("/workloads/{workload_id}")
def workload_detail(request: Request, workload_id: WorkloadId) -> Response:
    """One workload: status, why it waits (or, for a notebook, the culler's warning while it is about to be
    culled), timeline, replicas with node and GPUs, live logs and its spec."""
    def build(who: Caller) -> Response:
        services = services_of(request)
        latest = services.notebook_culler.latest if services.notebook_culler else {}
        with services.db.session(write=False) as session:
            row = workloads.visible_workload(session, who.principal, workload_id)
            detail = workloads.detail_view(session, row, tasks=ARRAY_TASKS_SHOWN)
            warning = notebooks.cull_warnings(session, [row], latest).get(row.id)
        terminal = WorkloadStatus(detail.status).is_terminal()
        return page(request, "workload.html", who, w=detail, terminal=terminal, cull_warning=warning,
                    spec_yaml=yaml.safe_dump(detail.spec, sort_keys=False))
    return guard(request, build)


@router.post("/workloads/{workload_id}/cancel")
async def cancel(request: Request, workload_id: WorkloadId) -> Response:
    """Cancel the workload (the API's permission checks) and show it again."""
    def build(who: Caller, _fields: dict[str, str]) -> Response:
        services = services_of(request)
        services.db.transaction(lambda session: workloads.cancel(session, who.principal, workload_id,
                                                                  services.clock()))
        services.wake_reconciler()
        services.wake_scheduler()
        return RedirectResponse(f"/workloads/{workload_id}", status_code=303)
    return await guard_form(request, build)


@router.post("/workloads/{workload_id}/resubmit")
async def resubmit(request: Request, workload_id: WorkloadId) -> Response:
    """Submit the workload's spec again as a new workload (as `gpupool resubmit`) and show the new one."""
    def build(who: Caller, _fields: dict[str, str]) -> Response:
        services = services_of(request)
        with services.db.session(write=False) as session:
            spec = dict(workloads.visible_workload(session, who.principal, workload_id).spec)
        new_id = _submit(request, who, schemas.SubmitRequest(spec=spec))
        return RedirectResponse(f"/workloads/{new_id}", status_code=303)
    return await guard_form(request, build)


def _submit(request: Request, who: Caller, body: schemas.SubmitRequest) -> int:
    services = services_of(request)
    with services.db.session() as session:
        row, _ = workloads.submit(session, who.principal, body, services.clock(), services.feasibility)
        new_id = row.id
    services.wake_scheduler()
    return new_id


@router.get("/workloads/{workload_id}/logs/stream")
def log_stream(request: Request, workload_id: WorkloadId,
               replica: Annotated[int, Query(ge=0, le=100_000)] = 0) -> Response:
    """The replica's output as Server-Sent Events (one `data:` per line), following it until it ends, then
    `event: end`. Before the replica starts: one `event: wait` with the reason (the page asks again shortly);
    a workload that ended without starting it: `event: end` with the reason."""
    def build(who: Caller) -> Response:
        services = services_of(request)
        with services.db.session(write=False) as session:
            try:
                chunks = workloads.log_lines(session, who.principal, workload_id, replica, LOG_TAIL, True,
                                             services.executor)
            except ConflictError as error:
                row = workloads.visible_workload(session, who.principal, workload_id)
                event = "end" if row.current_status.is_terminal() else "wait"
                return StreamingResponse(_single(event, error.message), media_type="text/event-stream")
        return StreamingResponse(_events(chunks), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})
    return guard(request, build)


async def _events(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    async for chunk in chunks:
        for line in chunk.splitlines():
            yield f"data: {json.dumps(line)}\n\n"
    yield "event: end\ndata: \"\"\n\n"


async def _single(event: str, reason: str) -> AsyncIterator[str]:
    yield f"event: {event}\ndata: {json.dumps(reason)}\n\n"


NEW_EXAMPLE = "kind: job\nname: my-job\ncommand: python train.py\nresources: {cpu: 1, memory: 2GiB, gpu: 1}\n"


@router.get("/new")
def new_form(request: Request) -> Response:
    """The new-workload form (common fields) and the YAML editor."""
    return guard(request, lambda who: _new_page(request, who))


def _new_page(request: Request, who: Caller, status: int = 200, error: str | None = None, field: str | None = None,
              values: dict[str, str] | None = None) -> Response:
    services = services_of(request)
    with services.db.session(write=False) as session:
        projects = [p.name for p in accounts.list_projects(session, who.principal)]
    viewer = Viewer(who.principal.name, who.principal.is_admin)  # the shared ones and the caller's own
    environments = [e.name for e in services.environments.list(viewer)] if services.environments else []
    # a fresh idempotency key per rendered form: a double click or a resent form creates one workload
    return page(request, "new.html", who, status=status, error=error, field=field, values=values or {},
                projects=projects, environments=environments, example=NEW_EXAMPLE, submit_key=secrets.token_urlsafe(16))


@router.post("/new")
async def new_submit(request: Request) -> Response:
    """Submit from the form (mode=form) or the YAML editor (mode=yaml); errors shown inline, the form kept."""
    def build(who: Caller, fields: dict[str, str]) -> Response:
        try:
            body = _request_of(fields)
            new_id = _submit(request, who, body)
        except ValidationError as error:
            return _new_page(request, who, 422, error.detail if error.field else error.message, error.field, fields)
        except ConflictError as error:
            return _new_page(request, who, 409, error.message, None, fields)
        return RedirectResponse(f"/workloads/{new_id}", status_code=303)
    return await guard_form(request, build)


@router.post("/new/check")
async def new_check(request: Request) -> Response:
    """The dry run of the form or the YAML (same fields as /new): JSON with the scheduler's verdict, or the
    validation error and its field; the page shows it before anything is submitted."""
    def build(who: Caller, fields: dict[str, str]) -> Response:
        services = services_of(request)
        loop = services.scheduling_loop
        try:
            body = _request_of(fields)
            if loop is None:
                raise ValidationError("the scheduler is not running on this server", "spec")
            with services.db.session(write=False) as session:
                result = dry_run.dry_run(session, who.principal, body, loop, services.feasibility, services.clock())
        except ValidationError as error:
            return JSONResponse({"error": error.detail if error.field else error.message, "field": error.field},
                                status_code=422)
        return JSONResponse(result.model_dump(mode="json"))
    return await guard_form(request, build)


def _request_of(fields: dict[str, str]) -> schemas.SubmitRequest:
    key = fields.get("submit_key") or None
    if fields.get("mode") == "yaml":
        return schemas.SubmitRequest(spec_yaml=fields.get("spec_yaml", ""), idempotency_key=key)
    return schemas.SubmitRequest(spec=spec_from_form(fields), idempotency_key=key)


FORM_KINDS = ("job", "notebook", "service")  # what the simple form makes; the YAML editor takes every kind


def spec_from_form(fields: dict[str, str]) -> dict[str, object]:
    """The spec the simple form describes: kind (job, notebook or service), name, project, command,
    environment (from `gpupool envs`), replicas and resources (GPU as a count or a share, an optional model
    and memory). A notebook takes no command or replicas (gpupool writes them) but an idle timeout; a
    service's replicas are its maximum, with its minimum, port and models (comma-separated) beside them.
    Empty fields are left out so the spec's defaults apply."""
    kind = fields.get("kind") or "job"
    if kind not in FORM_KINDS:
        raise ValidationError(f"the form makes a {', '.join(FORM_KINDS)}; use the YAML editor for {kind!r}", "kind")
    spec: dict[str, object] = {"kind": kind}
    text_fields = ("name", "project", "environment") + (() if kind == "notebook" else ("command",))
    for key in text_fields:
        if fields.get(key, "").strip():
            spec[key] = fields[key].strip()
    if kind == "notebook" and fields.get("idle_timeout", "").strip():
        spec["idle_timeout"] = fields["idle_timeout"].strip()
    if kind == "service":
        spec |= _service_fields(fields)
    elif kind == "job" and fields.get("replicas", "").strip():
        spec["replicas"] = _number(fields["replicas"], "replicas")
    resources = _resources_from_form(fields)
    if resources:
        spec["resources"] = resources
    return spec


def _service_fields(fields: dict[str, str]) -> dict[str, object]:
    out: dict[str, object] = {}
    models = [m.strip() for m in fields.get("models", "").split(",") if m.strip()]
    if models:
        out["models"] = models
    if fields.get("port", "").strip():
        out["port"] = _number(fields["port"], "port")
    replicas: dict[str, object] = {}
    if fields.get("min_replicas", "").strip():
        replicas["min"] = _number(fields["min_replicas"], "replicas.min")
    if fields.get("replicas", "").strip():
        replicas["max"] = _number(fields["replicas"], "replicas.max")
    if replicas:
        out["replicas"] = replicas
    return out


def _resources_from_form(fields: dict[str, str]) -> dict[str, object]:
    resources: dict[str, object] = {}
    for key in ("cpu", "memory"):
        if fields.get(key, "").strip():
            resources[key] = fields[key].strip()
    gpu: dict[str, object] = {}
    if fields.get("gpu", "").strip():
        amount = _number(fields["gpu"], "gpu")
        gpu["share" if amount < 1 else "count"] = amount
    for key in ("gpu_model", "gpu_memory"):
        if fields.get(key, "").strip():
            gpu[key.removeprefix("gpu_")] = fields[key].strip()
    if gpu:
        resources["gpu"] = gpu if len(gpu) > 1 or "share" in gpu else gpu["count"]
    return resources


def _number(text: str, name: str) -> float | int:
    try:
        value = float(text)
    except ValueError:
        raise ValidationError(f"{name} must be a number (got {text!r})", name) from None
    return int(value) if value.is_integer() else value
