"""Notebooks: who may open one, stop / start / cull, the open link, and the list with idle figures.

A notebook is an ordinary workload of kind notebook (submitted like any spec). Only its owner, while they may
still submit in its project (not a viewer), and the admins of its project may open, stop or start it: a
notebook holds a GPU and runs code. Other members and viewers see it in `ls` but cannot reach it. Stop and cull
move it to `stopped` (its replica is stopped, its GPU freed, its files stay in the user's storage); `start`
requeues it with the same id, and the scheduler places it again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpupool.api import notebook_schemas as nb
from gpupool.domain.errors import ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from gpupool.domain.notebooks import (
    IDLE_OFF,
    CullDecision,
    about_to_cull,
    cull_summary,
    duration_text,
    effective_idle_timeout,
    is_cull_warning,
    parse_idle_timeout,
)
from gpupool.domain.specs import parse_spec
from gpupool.domain.status import WorkloadStatus, transition
from gpupool.server.endpoints import stored_endpoints
from gpupool.server.notebook_keys import OPEN_TOKEN_TTL_S, NotebookKeys
from gpupool.server.services.auth import Principal
from gpupool.server.services.workloads import request_stop, visible_workload
from gpupool.store.orm import EventRow, ProjectRow, WorkloadRow
from gpupool.store.repos import accounts
from gpupool.store.repos import workloads as repo

KIND = "notebook"
MAX_LISTED = 500  # a person has a handful of notebooks; a project admin's list stays one screen of JSON pages


def notebook_path(workload_id: int) -> str:
    """The proxy path of notebook `workload_id` (JupyterLab's base_url)."""
    return f"/notebooks/{workload_id}/"


def may_open(principal: Principal, row: WorkloadRow) -> bool:
    """True when the caller may open, stop and start the notebook: an admin of its project, or its owner while
    they may submit in the project (an owner whose role was lowered to viewer may only look)."""
    return may_act(principal, row.user_id, row.project_id)


def may_act(principal: Principal, owner_id: int, project_id: int) -> bool:
    """may_open for a notebook of `owner_id` in `project_id` (the console's list decides its buttons by it)."""
    if principal.can_manage(project_id):
        return True
    return principal.user_id == owner_id and principal.can_write(project_id)


def notebook_row(session: Session, principal: Principal, workload_id: int, for_update: bool = False,
                 act: bool = True) -> WorkloadRow:
    """The notebook if the caller may see it (NotFoundError otherwise, also when the workload is not a
    notebook) and, with `act`, may open it (PermissionDeniedError: other members and viewers may only look)."""
    row = visible_workload(session, principal, workload_id, for_update=for_update)
    if row.kind != KIND:
        raise NotFoundError(f"workload {workload_id} is a {row.kind}, not a notebook")
    if act and not may_open(principal, row):
        if principal.user_id == row.user_id:
            raise PermissionDeniedError(
                f"your role in notebook {workload_id}'s project is {principal.roles.get(row.project_id)}; a viewer "
                "may see a notebook but not open, stop or start it (that needs the member role, as submitting "
                "does); ask an admin of the project")
        raise PermissionDeniedError(f"notebook {workload_id} belongs to another user; only its owner and the "
                                    "project's admins may open, stop or start it")
    return row


def stop(session: Session, principal: Principal, workload_id: int, now: float) -> WorkloadRow:
    """Stop a notebook: its replica is asked to stop (the GPU frees once it has), the files stay; `start`
    brings it back. ConflictError when it is already stopped or ended."""
    row = notebook_row(session, principal, workload_id, for_update=True)
    status = row.current_status
    if status == WorkloadStatus.STOPPED or status.is_terminal():
        raise ConflictError(f"notebook {workload_id} is {status}; nothing to stop")
    transition(row, WorkloadStatus.STOPPED, f"stopped by {principal.name}; files kept, "
               f"`gpupool notebook start {workload_id}` starts it again", now)
    row.started_at = None
    request_stop(session, row, now)
    return row


def start(session: Session, principal: Principal, workload_id: int, now: float) -> WorkloadRow:
    """Start a stopped (or culled) notebook again: it waits in its queue like a new one, same id, same files.
    ConflictError unless it is stopped, and while its last run's replica is still stopping (so two runs never
    hold resources at once)."""
    row = notebook_row(session, principal, workload_id, for_update=True)
    if row.current_status != WorkloadStatus.STOPPED:
        raise ConflictError(f"notebook {workload_id} is {row.status}; only a stopped notebook can be started")
    if row.attempt and any(not r.current_state.is_terminal for r in repo.replicas_of(session, row.id, row.attempt)):
        raise ConflictError(f"notebook {workload_id} is still stopping; try again in a few seconds")
    transition(row, WorkloadStatus.PENDING, f"started again by {principal.name}", now)
    return row


def cull(session: Session, workload_id: int, attempt: int, idle_for_s: float, now: float) -> bool:
    """Stop a running notebook that stayed idle (the culler's act); False when it changed meanwhile (another
    run, or no longer running), so a late decision never stops a fresh run."""
    row = repo.workload_by_id(session, workload_id, for_update=True)
    if row is None or row.attempt != attempt or row.current_status != WorkloadStatus.RUNNING:
        return False
    transition(row, WorkloadStatus.STOPPED, f"culled after {duration_text(idle_for_s)} idle; files kept, "
               f"`gpupool notebook start {workload_id}` starts it again", now)
    row.started_at = None
    request_stop(session, row, now)
    return True


def open_link(session: Session, principal: Principal, workload_id: int, keys: NotebookKeys,
              now: float) -> nb.NotebookOpen:
    """A one-time link that opens the notebook in a browser (see NotebookOpen)."""
    row = notebook_row(session, principal, workload_id)
    if row.current_status.is_terminal():
        raise ConflictError(f"notebook {workload_id} ended ({row.status}); create a new one")
    token = keys.open_token(principal.user_id, workload_id, now)
    return nb.NotebookOpen(id=workload_id, path=f"{notebook_path(workload_id)}lab?ptoken={token}",
                           expires_at=float(int(now) + OPEN_TOKEN_TTL_S), ready=is_ready(session, row))


def is_ready(session: Session, row: WorkloadRow) -> bool:
    """True when the notebook runs and its Jupyter accepts connections."""
    if row.current_status != WorkloadStatus.RUNNING or not row.attempt:
        return False
    return any(e.ready for r in repo.replicas_of(session, row.id, row.attempt) if r.number == 0
               for e in stored_endpoints(r.endpoints))


def idle_timeout_of(spec: Mapping[str, object], default: str, cap_s: int | None = None) -> int:
    """The idle timeout of a notebook in seconds (IDLE_OFF: never): its spec's, else the pool's default, held
    to its project's cap `cap_s` (see effective_idle_timeout)."""
    own = parse_idle_timeout(spec.get("idle_timeout"))
    if own is None:
        try:
            own = parse_idle_timeout(default, "notebook_idle_timeout")
        except ValidationError:
            own = None
    return effective_idle_timeout(IDLE_OFF if own is None else own, cap_s)


def idle_caps(session: Session) -> dict[int, int | None]:
    """Each project's cap on its notebooks' idle_timeout (None: no cap), by project id."""
    return dict(session.execute(select(ProjectRow.id, ProjectRow.max_idle_timeout_s)).all())


def cap_warning(session: Session, row: WorkloadRow) -> list[str]:
    """A warning for a notebook whose spec asks an idle_timeout above its project's cap, or `off` under one
    (accepted all the same; the cap applies), else nothing."""
    if row.kind != KIND:
        return []
    project = session.get(ProjectRow, row.project_id)
    asked = parse_idle_timeout(row.spec.get("idle_timeout"))
    if project is None or project.max_idle_timeout_s is None or asked is None:
        return []
    cap = project.max_idle_timeout_s
    if asked != IDLE_OFF and asked <= cap:
        return []
    wanted = "off" if asked == IDLE_OFF else duration_text(asked)
    return [f"notebook {row.id} asks idle_timeout {wanted}, but project {project.name} caps it at "
            f"{duration_text(cap)}: it is culled after {duration_text(cap)} idle"]


def list_notebooks(session: Session, principal: Principal, activity: Mapping[int, CullDecision],
                   default_timeout: str, include_ended: bool = False) -> list[nb.NotebookInfo]:
    """The notebooks the caller may see, newest first, with the culler's latest idle figures."""
    query = select(WorkloadRow).where(WorkloadRow.kind == KIND).order_by(WorkloadRow.id.desc()).limit(MAX_LISTED)
    visible = principal.readable_projects()
    if visible is not None:
        query = query.where(WorkloadRow.project_id.in_(sorted(visible)))
    rows = [r for r in session.scalars(query) if include_ended or not r.current_status.is_terminal()]
    names = accounts.project_names(session)
    caps = idle_caps(session)
    users = accounts.user_names(session, {r.user_id for r in rows})
    warnings = cull_warnings(session, rows, activity)
    out = []
    for row in rows:
        seen = activity.get(row.id) if row.current_status == WorkloadStatus.RUNNING else None
        out.append(nb.NotebookInfo(
            id=row.id, name=row.name, project=names.get(row.project_id, "?"), user=users.get(row.user_id, "?"),
            status=row.status, gpu_milli=_gpu_milli(row.spec), path=notebook_path(row.id),
            idle_timeout_s=idle_timeout_of(row.spec, default_timeout, caps.get(row.project_id)),
            message=row.message,
            idle_for_s=seen.idle_for_s if seen else None, culls_in_s=seen.culls_in_s if seen else None,
            cull_warning=warnings.get(row.id)))
    return out


def cull_warnings(session: Session, rows: Sequence[WorkloadRow],
                  activity: Mapping[int, CullDecision]) -> dict[int, nb.CullWarning]:
    """The culler's warning of each notebook of `rows` that is about to be culled, by id: running, warned in
    its current run (a warning event since the run started) and not seen used since by the culler's latest
    look `activity` (no look yet keeps the warning: the culler may still cull). The run's latest warning."""
    running = {r.id: r for r in rows if r.kind == KIND and r.current_status == WorkloadStatus.RUNNING
               and r.started_at is not None and about_to_cull(activity.get(r.id))}
    if not running:
        return {}
    query = (select(EventRow).where(EventRow.workload_id.in_(sorted(running)), EventRow.to_status.is_(None),
                                    EventRow.reason.startswith("idle for ")).order_by(EventRow.id))
    out: dict[int, nb.CullWarning] = {}
    for event in session.scalars(query):
        row = running[event.workload_id]
        if row.started_at is not None and event.at >= row.started_at and is_cull_warning(event.reason):
            seen = activity.get(row.id)
            out[row.id] = nb.CullWarning(at=event.at, text=event.reason,
                                         summary=cull_summary(seen.culls_in_s if seen else None))
    return out


def _gpu_milli(spec: Mapping[str, object]) -> int:
    return parse_spec(spec).roles[0].resources.gpu.nominal_milli()
