"""Workloads: submit (validated, idempotent), list, show, cancel, logs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from gpupool.domain.arrays import ARRAY_KIND
from gpupool.domain.errors import (
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    UnsatisfiableError,
    ValidationError,
)
from gpupool.domain.specs import JobSpec, WorkloadKind, WorkloadSpec, parse_spec, validate_name
from gpupool.domain.status import WorkloadStatus, parse_status, transition
from gpupool.executors.base import Capability, Executor
from gpupool.scheduler.queues import beyond_limit
from gpupool.server.api import schemas
from gpupool.server.endpoints import stored_endpoints
from gpupool.server.environments import Viewer
from gpupool.server.services import arrays
from gpupool.server.services.auth import Principal
from gpupool.server.services.feasibility import FeasibilityCache, pending_from_spec
from gpupool.server.services.spec_yaml import load_spec_yaml
from gpupool.store.convert import queue_from_row
from gpupool.store.orm import EventRow, ReplicaRow, WorkloadRow
from gpupool.store.repos import accounts, queues
from gpupool.store.repos import services as services_repo
from gpupool.store.repos import workloads as repo

MAX_LIST = 1000
DETAIL_TASKS = 50  # a job array's tasks `show` carries unless asked otherwise: what `gpupool show` prints
MAX_TAIL = 100_000
_SUBMITTED_EVENTS = "gpupool.submitted_events"  # session.info: workload id -> the events its submit wrote


# ---------------------------------------------------------------------------------------- input
def load_spec_input(body: schemas.SubmitRequest) -> Any:
    """The spec data of a submit request: exactly one of `spec` (an object) or `spec_yaml` (YAML text)."""
    if (body.spec is None) == (body.spec_yaml is None):
        raise ValidationError("send exactly one of spec (an object) or spec_yaml (YAML text)", "spec")
    if body.spec is not None:
        return body.spec
    return load_spec_yaml(body.spec_yaml or "")


# ---------------------------------------------------------------------------------------- views
def summary_view(row: WorkloadRow, project: str, user: str,
                 array: schemas.ArraySummary | None = None) -> schemas.WorkloadSummary:
    """One line of `ls` (`array`: a job array's tasks by status)."""
    return schemas.WorkloadSummary(
        id=row.id, name=row.name, kind=row.kind, project=project, queue=row.queue, user=user, status=row.status,
        priority=row.priority, replicas=row.replica_count, submitted_at=row.submitted_at, started_at=row.started_at,
        finished_at=row.finished_at, message=row.message, pending_reason=row.pending_reason,
        queue_position=row.queue_position, attempt=row.attempt, parent_id=row.parent_id,
        array_index=row.array_index, array=array)


def proxy_path(workload_id: int, port: int, replica: int = 0) -> str:
    """The server path that proxies to a port of a replica (the short form for replica 0)."""
    if replica == 0:
        return f"/workloads/{workload_id}/ports/{port}/"
    return f"/workloads/{workload_id}/replicas/{replica}/ports/{port}/"


def replica_view(r: ReplicaRow) -> schemas.Replica:
    """A replica as the API shows it."""
    p = r.placement
    return schemas.Replica(
        number=r.number, role=r.role, attempt=r.attempt, node=r.node, state=r.state, exit_code=r.exit_code,
        message=r.message, cpu_milli=int(p.get("cpu_milli", 0)), memory_mib=int(p.get("memory_mib", 0)),
        gpus=[schemas.GpuAllocation(**g) for g in p.get("gpus", [])], started_at=r.started_at, ended_at=r.ended_at,
        endpoints=[schemas.ReplicaEndpoint(port=e.name, host=e.host, node_port=e.port, ready=e.ready,
                                           proxy_path=proxy_path(r.workload_id, e.name, r.number))
                   for e in stored_endpoints(r.endpoints)])


def detail_view(session: Session, row: WorkloadRow, tasks: int = DETAIL_TASKS,
                names: tuple[str, str] | None = None) -> schemas.WorkloadDetail:
    """`show`: summary, spec, the current run's replicas, counters, history and, for a job array, its first
    `tasks` tasks in index order (`tasks_next` pages on through `task_page`; the answers to submit and cancel
    ask for none: the counts say enough). `names`: the workload's project and user names when the caller
    already has them (a submit), else they are read."""
    if names is None:
        names = (accounts.project_names_kept(session).get(row.project_id, "?"),
                 accounts.user_names(session, {row.user_id}).get(row.user_id, "?"))
    is_array = row.kind == ARRAY_KIND
    array = arrays.array_summary(row, arrays.task_counts(session, [row.id]).get(row.id, {})) if is_array else None
    replicas = list(repo.replicas_of(session, row.id, row.attempt)) if row.attempt else []
    page = arrays.task_page(session, row.id, tasks) if is_array and tasks > 0 else schemas.ArrayTaskPage()
    return _detail(row, names, replicas, repo.events_of(session, row.id), array, page)


def fresh_detail_view(row: WorkloadRow, names: tuple[str, str], events: Sequence[EventRow]) -> schemas.WorkloadDetail:
    """What `detail_view` shows of a workload its own transaction has just created, from what that
    transaction wrote (`events`: its history so far): no replicas yet, no tasks. Not for a job array."""
    if row.kind == ARRAY_KIND or row.attempt:
        raise ValueError(f"workload {row.id} is not a freshly submitted job: read it with detail_view")
    return _detail(row, names, [], events, None, schemas.ArrayTaskPage())


def _detail(row: WorkloadRow, names: tuple[str, str], replicas: Sequence[ReplicaRow], events: Sequence[EventRow],
            array: schemas.ArraySummary | None, page: schemas.ArrayTaskPage) -> schemas.WorkloadDetail:
    summary = summary_view(row, *names, array)
    history = [schemas.Event(at=e.at, from_status=e.from_status, to_status=e.to_status, replica=e.replica,
                             reason=e.reason) for e in events]
    return schemas.WorkloadDetail(**summary.model_dump(), spec=row.spec, retries_used=row.retries_used,
                                  preemptions=row.preemptions, replica_list=[replica_view(r) for r in replicas],
                                  events=history, tasks=page.tasks, tasks_next=page.next_after)


# --------------------------------------------------------------------------------------- submit
def prepare_submission(body: schemas.SubmitRequest) -> WorkloadSpec:
    """The validated spec of a submit request, from the request alone (no database): a route calls it before
    its transaction, so that parsing never holds the store's write lock. ValidationError when it is wrong."""
    data = load_spec_input(body)
    if body.workdir is not None and isinstance(data, dict) and data.get("workdir") is None:
        data = {**data, "workdir": body.workdir}
    spec = parse_spec(data)
    if spec.kind == WorkloadKind.PIPELINE:
        raise ValidationError("pipelines are submitted with `gpupool pipeline submit FILE` (POST /api/v1/pipelines)",
                              "kind")
    if spec.workdir is not None and not Path(spec.workdir).is_dir():
        raise ValidationError(f"{spec.workdir} is not a directory on the server's machine", "workdir")
    return spec


@dataclass(frozen=True)
class SubmitPlan:
    """What a submit's reads found: the project, its queue, the canonical spec, and the workload an idempotency
    key already names (`replay`: nothing to write)."""

    project_id: int
    project_name: str
    queue: str
    canonical: dict[str, Any]
    replay: WorkloadRow | None = None
    over_limit: str | None = None  # what of the queue's limit the spec asks beyond (`beyond_limit`), if any


def plan_submission(session: Session, principal: Principal, body: schemas.SubmitRequest, spec: WorkloadSpec,
                    feasibility: FeasibilityCache, read_key: bool = True) -> SubmitPlan:
    """The reads of a submit (project, queue, idempotency key, environment, whether it could ever fit), in the
    write transaction (a single submit) or in a read-only one before it (a batch, whose reads would hold
    SQLite's one write lock as long as its items take). Raises what `submit` raises for a refused spec.
    `submit(..., plan=)` re-checks what could have changed since (the project's queue; a key taken meanwhile).
    `read_key=False` (in the write transaction only) leaves a key that no workload has yet to the insert's
    ON CONFLICT, one read fewer: the key is read here only when the spec is refused (a replay answers with the
    stored workload even when its spec would be refused now), and by `submit` when the insert finds it taken."""
    project_id, project_name = _resolve_project(session, principal, spec)
    queue = queues.project_queue(session, project_id)
    if queue is None:
        raise ConflictError(f"project {project_name} has no queue; ask an administrator to recreate it")
    if spec.queue is not None and spec.queue != queue.name:
        raise ValidationError(f"project {project_name} submits to queue {queue.name}; remove queue: or set it to "
                              f"{queue.name}", "queue")
    canonical = spec.to_dict() | {"project": project_name, "queue": queue.name}
    over_limit = beyond_limit(queue, pending_from_spec("0", queue.name, spec, 0.0).nominal())
    key = body.idempotency_key
    existing = repo.workload_by_key(session, principal.user_id, key) if key is not None and read_key else None
    if existing is None:
        try:
            _refuse_unless_it_could_run(session, principal, spec, queue.name, feasibility)
        except ValidationError:
            if key is None or read_key:
                raise
            existing = repo.workload_by_key(session, principal.user_id, key)  # a replay is answered all the same
            if existing is None:
                raise
        else:
            return SubmitPlan(project_id, project_name, queue.name, canonical, over_limit=over_limit)
    return SubmitPlan(project_id, project_name, queue.name, canonical, _replay(existing, canonical, key or ""),
                      over_limit)


def _refuse_unless_it_could_run(session: Session, principal: Principal, spec: WorkloadSpec, queue: str,
                                feasibility: FeasibilityCache) -> None:
    """ValidationError when the spec names an environment its submitter may not use, or UnsatisfiableError
    when no node could ever hold it."""
    feasibility.check_environment(spec, Viewer(principal.name, principal.is_admin))
    reason = feasibility.never_fits_reason(session, spec, queue)
    if reason is not None:
        raise UnsatisfiableError(reason, "resources")


def submit(session: Session, principal: Principal, body: schemas.SubmitRequest, now: float,
           feasibility: FeasibilityCache, parent_id: int | None = None,
           prepared: WorkloadSpec | None = None, plan: SubmitPlan | None = None) -> tuple[WorkloadRow, bool]:
    """Validate and store a workload (status pending); returns (row, created). With an idempotency key, a
    second submit of the same spec returns the first workload (created False); a different spec is a conflict.
    `parent_id` names the controller workload (pipeline run, sweep, service) a child is created for.
    `prepared` is `prepare_submission(body)` when the caller already ran it; `plan` is `plan_submission` (run
    in this transaction or before it): only the project's queue is read again here (when it changed,
    everything is read again; in the same transaction, the setup cache answers), and a key stored meanwhile is
    found by the insert's ON CONFLICT on the unique (user, key) index."""
    spec = prepared if prepared is not None else prepare_submission(body)
    if plan is not None:
        current = queues.project_queue(session, plan.project_id)
        if current is None or current.name != plan.queue:
            plan = None  # the project or its queue changed since: decide again inside the transaction
    if plan is None:
        plan = plan_submission(session, principal, body, spec, feasibility)
    if plan.replay is not None:
        return plan.replay, False
    key, canonical = body.idempotency_key, plan.canonical
    array = spec.array if isinstance(spec, JobSpec) else None
    row = repo.insert_workload(session, {
        "name": spec.name, "kind": ARRAY_KIND if array else spec.kind.value, "project_id": plan.project_id,
        "queue": plan.queue, "user_id": principal.user_id, "spec": canonical, "priority": spec.priority,
        "replica_count": spec.replica_count, "submitted_at": now, "updated_at": now, "message": "submitted",
        "idempotency_key": key, "parent_id": parent_id})
    if row is None:  # the key was stored since the plan read it (a concurrent submit with the same key)
        existing = repo.workload_by_key(session, principal.user_id, key or "")
        if existing is None:
            raise ConflictError(f"idempotency key {key!r} was in use a moment ago; submit again")
        return _replay(existing, canonical, key or ""), False
    event = repo.insert_event(session, row.id, now, f"submitted by {principal.name} to queue {plan.queue}")
    session.info.setdefault(_SUBMITTED_EVENTS, {})[row.id] = [event]
    if array is not None:
        arrays.add_tasks(session, row, array, now)
    return row, True


def submitted_events(session: Session) -> dict[int, list[EventRow]]:
    """The history each workload `submit` created in this session's transaction starts with (by workload
    id), for answering without reading it back; taken (a second call returns only later submits')."""
    return session.info.pop(_SUBMITTED_EVENTS, {})  # type: ignore[no-any-return]


def submission_warnings(session: Session, row: WorkloadRow, plan: SubmitPlan | None = None) -> list[str]:
    """What the submitter should know although the workload was accepted: it asks for more than its queue's
    limit, so it waits until an administrator raises the limit (a warning, not a refusal). `plan`: the
    submit's plan, whose finding is used when it planned for the workload's queue (else the queue is read)."""
    if plan is not None and plan.queue == row.queue and plan.project_id == row.project_id:
        never = plan.over_limit
    else:
        queue = queues.queue_by_name(session, row.queue)
        if queue is None:
            return []
        demand = pending_from_spec(str(row.id), row.queue, parse_spec(row.spec), row.submitted_at).nominal()
        never = beyond_limit(queue_from_row(queue), demand)
    return limit_warning(row.id, never)


def limit_warning(workload_id: int, beyond: str | None) -> list[str]:
    """The submitter's warning for a workload that asks more than its queue's limit (`beyond`, from
    `beyond_limit`), or none."""
    return [f"workload {workload_id} {beyond}; it stays pending until then"] if beyond else []


def _replay(existing: WorkloadRow, canonical: dict[str, Any], key: str) -> WorkloadRow:
    if existing.spec != canonical:
        raise ConflictError(f"idempotency key {key!r} was already used for a different spec (workload "
                            f"{existing.id}); use a new key")
    return existing


def _resolve_project(session: Session, principal: Principal, spec: WorkloadSpec) -> tuple[int, str]:
    names = accounts.project_names_kept(session)
    writable = sorted((name, pid) for pid, name in names.items() if principal.can_write(pid))
    if spec.project is None:
        if len(writable) == 1:
            return writable[0][1], writable[0][0]
        default = [(n, p) for n, p in writable if n == "default"]
        if default:
            return default[0][1], default[0][0]
        if not writable:
            raise PermissionDeniedError("you may not submit to any project; ask an administrator to add you to one")
        raise ValidationError(f"name a project (project: NAME); you may submit to {', '.join(n for n, _ in writable)}",
                              "project")
    pid = next((p for p, n in names.items() if n == spec.project), None)
    if pid is None or not principal.can_read(pid):
        options = ", ".join(n for n, _ in writable) or "none"
        raise ValidationError(f"unknown project {spec.project!r}; you may submit to: {options}", "project")
    if not principal.can_write(pid):
        raise PermissionDeniedError(f"you may only view project {spec.project}; ask one of its admins for the "
                                    "member role to submit")
    return pid, spec.project


# ----------------------------------------------------------------------------------- list, show
def visible_workload(session: Session, principal: Principal, workload_id: int,
                     for_update: bool = False) -> WorkloadRow:
    """The workload if the caller may see it; NotFoundError otherwise (others' workloads look absent)."""
    row = repo.workload_by_id(session, workload_id, for_update=for_update)
    if row is None or not principal.can_read(row.project_id):
        raise NotFoundError(f"workload {workload_id} not found")
    return row


def list_workloads(session: Session, principal: Principal, project: str | None, statuses: Sequence[str],
                   name: str | None, limit: int, before_id: int | None, kind: str | None = None,
                   user: str | None = None) -> schemas.WorkloadPage:
    """Workloads the caller may see, newest first, filtered by project, status, name, kind and user (a user
    name that does not exist matches nothing)."""
    names = accounts.project_names_kept(session)
    visible = principal.readable_projects()
    if project is not None:
        pid = next((p for p, n in names.items() if n == validate_name(project, "project")), None)
        if pid is None or (visible is not None and pid not in visible):
            raise NotFoundError(f"project {project!r} not found among your projects")
        visible = frozenset({pid})
    wanted = tuple(sorted({parse_status(s).value for s in statuses}))
    if not 1 <= limit <= MAX_LIST:
        raise ValidationError(f"limit must be 1..{MAX_LIST}", "limit")
    user_ids = None
    if user:
        found = accounts.user_by_name(session, user)
        user_ids = frozenset({found.id} if found else set())
    kinds = (_kind(kind),) if kind else ()
    f = repo.WorkloadFilter(project_ids=visible, statuses=wanted, name=validate_name(name) if name else None,
                            limit=limit, before_id=before_id, kinds=kinds, user_ids=user_ids)
    rows = repo.list_workloads(session, f)
    users = accounts.user_names(session, {r.user_id for r in rows})
    counts = arrays.task_counts(session, [r.id for r in rows if r.kind == ARRAY_KIND])
    items = [summary_view(r, names.get(r.project_id, "?"), users.get(r.user_id, "?"),
                          arrays.array_summary(r, counts.get(r.id, {})) if r.kind == ARRAY_KIND else None)
             for r in rows]
    total = repo.count_workloads(session, f)
    more = len(rows) == limit and total > limit
    return schemas.WorkloadPage(items=items, total=total, next_before_id=rows[-1].id if more and rows else None)


def _kind(text: str) -> str:
    """A stored kind named in a filter: a spec's kind, or `array` (the row a job array's spec creates)."""
    if text == ARRAY_KIND:
        return ARRAY_KIND
    try:
        return WorkloadKind(text).value
    except ValueError:
        kinds = ", ".join([k.value for k in WorkloadKind] + [ARRAY_KIND])
        raise ValidationError(f"kind must be one of {kinds} (got {text!r})", "kind") from None


# ---------------------------------------------------------------------------------------- cancel
def cancel(session: Session, principal: Principal, workload_id: int, now: float) -> WorkloadRow:
    """Cancel a workload: pending work ends at once; running replicas are asked to stop (the reconciler stops
    them); a job array's tasks that have not ended are cancelled with it. ConflictError when it already ended."""
    row = visible_workload(session, principal, workload_id, for_update=True)
    if not principal.can_write(row.project_id):
        raise PermissionDeniedError("viewers cannot cancel workloads; ask a project admin for the member role")
    status = row.current_status
    if status.is_terminal():
        raise ConflictError(f"workload {workload_id} already ended ({status}); nothing to cancel")
    transition(row, WorkloadStatus.CANCELLED, f"cancelled by {principal.name}", now)
    request_stop(session, row, now)
    if row.kind == ARRAY_KIND:
        arrays.cancel_tasks(session, row, f"its array was cancelled by {principal.name}", now)
    return row


def preempt(session: Session, row: WorkloadRow, reason: str, now: float) -> None:
    """Mark an active workload preempted (it is requeued once its replicas are gone) and ask its replicas to
    stop; a service replica is not stopped here: its service's autoscaler drains it first (no new request;
    stopped once those in flight finished, or after service_drain_timeout_s)."""
    transition(row, WorkloadStatus.PREEMPTED, reason, now)
    row.preemptions += 1
    if services_repo.is_service_replica(session, row):
        repo.add_event(session, row.id, now, "draining before it stops: the gateway sends it no new request; "
                       "it stops once those in flight finish (at most service_drain_timeout_s)")
    else:
        request_stop(session, row, now)


def request_stop(session: Session, row: WorkloadRow, now: float) -> int:
    """Mark every live replica of the workload for stopping; returns how many were marked."""
    marked = 0
    for replica in repo.replicas_of(session, row.id, row.attempt) if row.attempt else ():
        if not replica.current_state.is_terminal and replica.stop_requested_at is None:
            replica.stop_requested_at = now
            marked += 1
    return marked


# ------------------------------------------------------------------------------------------ logs
def log_lines(session: Session, principal: Principal, workload_id: int, replica: int, tail: int | None,
              follow: bool, executor: Executor, attempt: int | None = None) -> AsyncIterator[str]:
    """The replica's output through the executor, as text chunks of whole lines (each line ending with a
    newline), for an event loop: of the current run, or of run `attempt` (1 is the first; a retried or
    preempted workload keeps the output of its earlier runs). `follow` streams until it ends."""
    row = visible_workload(session, principal, workload_id)
    if row.kind == ARRAY_KIND:
        raise ValidationError(f"workload {workload_id} is a job array; name one of its tasks, e.g. "
                              f"`gpupool logs {workload_id}.7` (`gpupool show {workload_id}` lists them)", "workload")
    if tail is not None and not 0 <= tail <= MAX_TAIL:
        raise ValidationError(f"tail must be 0..{MAX_TAIL}", "tail")
    if not 0 <= replica < row.replica_count:
        raise ValidationError(f"workload {workload_id} has replicas 0..{row.replica_count - 1}", "replica")
    if attempt is not None and not 1 <= attempt <= max(row.attempt, 1):
        runs = f"runs 1..{row.attempt}" if row.attempt else "no run yet"
        raise ValidationError(f"workload {workload_id} has {runs}; choose one of them", "attempt")
    run = attempt or row.attempt
    found = [r for r in repo.replicas_of(session, row.id, run) if r.number == replica] if run else []
    if not found or found[0].handle is None:
        if attempt is not None and attempt != row.attempt:
            raise ConflictError(f"replica {replica} did not start in run {attempt} of workload {workload_id}")
        why = f": {row.pending_reason}" if row.pending_reason else ""
        raise ConflictError(f"replica {replica} of workload {workload_id} has not started yet ({row.status}{why})")
    follow = follow and Capability.FOLLOW_LOGS in executor.capabilities
    return executor.log_stream(dict(found[0].handle), tail=tail, follow=follow)
