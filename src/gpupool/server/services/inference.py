"""Services (`kind: service`) as users see them: list, show, scale, update and rollback (revisions). The
controller and autoscaler are in `gpupool.server.workers.autoscaler`; the gateway's live state (ready
replicas, load) in `gpupool.server.gateway`."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from gpupool.api import service_schemas as api
from gpupool.domain.errors import ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from gpupool.domain.services import ServiceSpec
from gpupool.domain.specs import parse_spec, validate_name
from gpupool.server.api import schemas
from gpupool.server.environments import Viewer
from gpupool.server.gateway import Gateway
from gpupool.server.services.auth import Principal
from gpupool.server.services.feasibility import FeasibilityCache
from gpupool.store.orm import ServiceRevisionRow, WorkloadRow
from gpupool.store.repos import accounts
from gpupool.store.repos import services as services_repo
from gpupool.store.repos import workloads as repo


def _spec(row: WorkloadRow) -> ServiceSpec:
    spec = parse_spec(row.spec)
    if not isinstance(spec, ServiceSpec):  # the rows are chosen by kind; keep the type checker honest
        raise NotFoundError(f"workload {row.id} is not a service")
    return spec


def find(session: Session, principal: Principal, name: str) -> WorkloadRow:
    """The newest live service called `name` in the caller's projects; NotFoundError otherwise."""
    row = services_repo.service_by_name(session, validate_name(name, "name"), principal.readable_projects())
    if row is None:
        raise NotFoundError(f"service {name!r} not found among your projects' running services; "
                            "see `gpupool service ls`")
    return row


def summary(session: Session, gateway: Gateway, row: WorkloadRow, project: str) -> api.ServiceSummary:
    """A service's line: its bounds and models, and from the gateway its replicas' readiness and load."""
    spec = _spec(row)
    kids = [c for c in services_repo.live_children(session) if c.parent_id == row.id]
    view = gateway.service(row.id)
    ready = {b.workload_id for b in view.backends} if view else set()
    inflight, held = gateway.load({row.id: [c.id for c in kids]})[row.id]
    if row.current_status.is_terminal():
        state = f"ended ({row.status})"
    else:
        state = "serving" if ready else "starting" if kids else "scaled to zero"
    return api.ServiceSummary(
        id=row.id, name=row.name, project=project, state=state, models=list(spec.models),
        min_replicas=spec.min_replicas, max_replicas=spec.max_replicas, replicas=len(kids), ready=len(ready),
        inflight=inflight, held=held, waiting_reason=view.waiting_reason if view else "")


def list_services(session: Session, gateway: Gateway, principal: Principal) -> list[api.ServiceSummary]:
    """The live services the caller may see, oldest first."""
    names = accounts.project_names_kept(session)
    return [summary(session, gateway, row, names.get(row.project_id, "?"))
            for row in services_repo.live_services(session) if principal.can_read(row.project_id)]


def show(session: Session, gateway: Gateway, principal: Principal, name: str) -> api.ServiceDetail:
    """One service: summary, spec, replicas (ready, draining, in flight), history."""
    row = find(session, principal, name)
    base = summary(session, gateway, row, accounts.project_names_kept(session).get(row.project_id, "?"))
    view = gateway.service(row.id)
    ready = {b.workload_id for b in view.backends} if view else set()
    draining = gateway.draining()
    replicas = [api.ServiceReplica(workload_id=c.id, status=c.status, ready=c.id in ready,
                                   draining=c.id in draining, inflight=gateway.inflight_of(c.id),
                                   pending_reason=c.pending_reason)
                for c in services_repo.live_children(session) if c.parent_id == row.id]
    events = [schemas.Event(at=e.at, reason=e.reason, from_status=e.from_status, to_status=e.to_status)
              for e in repo.events_of(session, row.id)]
    return api.ServiceDetail(**base.model_dump(), spec=row.spec, replica_list=replicas, events=events)


def scale(session: Session, principal: Principal, name: str, body: api.ScaleRequest, now: float) -> WorkloadRow:
    """Change a service's replica bounds (min, max); the autoscaler converges to them. A member of the
    service's project only; ValidationError when min > max."""
    row = find(session, principal, name)
    if not principal.can_write(row.project_id):
        raise PermissionDeniedError("viewers cannot scale services; ask a project admin for the member role")
    spec = _spec(row)
    low = spec.min_replicas if body.min is None else body.min
    high = spec.max_replicas if body.max is None else body.max
    if low > high:
        raise ValidationError(f"min ({low}) would be larger than max ({high}); give both", "min")
    row.spec = parse_spec(row.spec | {"replicas": {"min": low, "max": high}}).to_dict() | {
        "project": row.spec.get("project"), "queue": row.spec.get("queue")}
    row.updated_at = now
    repo.add_event(session, row.id, now, f"scaled by {principal.name}: replicas min {low}, max {high}")
    return row


def update(session: Session, principal: Principal, name: str, data: Any, now: float, reason: str = "",
           feasibility: FeasibilityCache | None = None) -> tuple[WorkloadRow, int]:
    """Give a service a new spec (`data`, plain data of a `kind: service` spec with the same name): a new
    revision, rolled out by the autoscaler (new replicas start, take the traffic once ready, the old ones
    drain and stop). Returns the row and the new revision number. A member of its project only. With
    `feasibility`, a spec naming an environment that does not exist or is not built is refused as at submit."""
    row = find(session, principal, name)
    if not principal.can_write(row.project_id):
        raise PermissionDeniedError("viewers cannot update services; ask a project admin for the member role")
    new = parse_spec(data)
    if not isinstance(new, ServiceSpec):
        raise ValidationError(f"an update of service {name} must be a kind: service spec", "kind")
    if new.name != row.name:
        raise ValidationError(f"the spec names {new.name!r}, not {row.name!r}; a service keeps its name", "name")
    if new.project not in (None, row.spec.get("project")):
        raise ValidationError(f"service {name} is in project {row.spec.get('project')}; it cannot move", "project")
    if feasibility is not None:
        feasibility.check_environment(new, Viewer(principal.name, principal.is_admin))
    canonical = new.to_dict() | {"project": row.spec.get("project"), "queue": row.spec.get("queue")}
    return row, _add_revision(session, row, canonical, now, reason or f"updated by {principal.name}")


def rollback(session: Session, principal: Principal, name: str, now: float,
             feasibility: FeasibilityCache | None = None) -> tuple[WorkloadRow, int]:
    """Go back to the spec before the current one, as a new revision (rolled out like an update; its
    environment, if it names one, must still exist and be built)."""
    row = find(session, principal, name)
    revisions = services_repo.revisions_of(session, row.id)
    if len(revisions) < 2:
        raise ConflictError(f"service {name} has no earlier revision to roll back to")
    previous = revisions[-2]
    return update(session, principal, name, previous.spec, now,
                  f"rolled back by {principal.name} to the spec of revision {previous.revision}", feasibility)


def _add_revision(session: Session, row: WorkloadRow, spec: dict[str, Any], now: float, reason: str) -> int:
    revisions = services_repo.revisions_of(session, row.id)
    if not revisions:  # the submitted spec becomes revision 1 on the first update
        session.add(ServiceRevisionRow(service_id=row.id, revision=1, spec=row.spec, created_at=row.submitted_at,
                                       reason="submitted"))
    number = (revisions[-1].revision if revisions else 1) + 1
    session.add(ServiceRevisionRow(service_id=row.id, revision=number, spec=spec, created_at=now, reason=reason))
    row.spec = spec
    row.updated_at = now
    repo.add_event(session, row.id, now, f"revision {number}: {reason}")
    return number
