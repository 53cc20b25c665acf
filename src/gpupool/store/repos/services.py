"""Queries of the service controller: live services and their replica workloads (children)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from gpupool.store.orm import ServiceRevisionRow, WorkloadRow
from gpupool.store.repos.workloads import LIVE_STATUSES

SERVICE_KIND = "service"


def live_services(session: Session) -> Sequence[WorkloadRow]:
    """Service controller workloads that have not ended, oldest first."""
    return session.scalars(select(WorkloadRow).where(WorkloadRow.kind == SERVICE_KIND,
                                                     WorkloadRow.status.in_(LIVE_STATUSES))
                           .order_by(WorkloadRow.id)).all()


def live_children(session: Session) -> Sequence[WorkloadRow]:
    """Live workloads whose parent is a service (ended or not), by id."""
    parent = aliased(WorkloadRow)  # live children found by status (index), their parent by id: no table scan
    return session.scalars(select(WorkloadRow).join(parent, parent.id == WorkloadRow.parent_id)
                           .where(WorkloadRow.status.in_(LIVE_STATUSES), WorkloadRow.array_index.is_(None),
                                  parent.kind == SERVICE_KIND)
                           .order_by(WorkloadRow.id)).all()


def children_count(session: Session, service_id: int) -> int:
    """How many replica workloads the service ever created (numbers the next one)."""
    return int(session.scalar(select(func.count()).select_from(WorkloadRow)
                              .where(WorkloadRow.parent_id == service_id)) or 0)


def is_service_replica(session: Session, row: WorkloadRow) -> bool:
    """True when `row` is a replica workload of a service (its parent is a service)."""
    if row.parent_id is None:
        return False
    return session.scalar(select(WorkloadRow.kind).where(WorkloadRow.id == row.parent_id)) == SERVICE_KIND


def service_by_name(session: Session, name: str, project_ids: frozenset[int] | None) -> WorkloadRow | None:
    """The newest live service called `name` in one of `project_ids` (None: any project)."""
    query = select(WorkloadRow).where(WorkloadRow.kind == SERVICE_KIND, WorkloadRow.name == name,
                                      WorkloadRow.status.in_(LIVE_STATUSES))
    if project_ids is not None:
        query = query.where(WorkloadRow.project_id.in_(sorted(project_ids)))
    return session.scalars(query.order_by(WorkloadRow.id.desc()).limit(1)).first()


def current_revisions(session: Session, service_ids: Sequence[int]) -> dict[int, int]:
    """The newest revision number of each service (1 for a service never updated)."""
    if not service_ids:
        return {}
    rows = session.execute(select(ServiceRevisionRow.service_id, func.max(ServiceRevisionRow.revision))
                           .where(ServiceRevisionRow.service_id.in_(sorted(service_ids)))
                           .group_by(ServiceRevisionRow.service_id)).all()
    found = {int(sid): int(rev) for sid, rev in rows}
    return {sid: found.get(sid, 1) for sid in service_ids}


def revisions_of(session: Session, service_id: int) -> Sequence[ServiceRevisionRow]:
    """A service's stored revisions, oldest first (none until its first update)."""
    return session.scalars(select(ServiceRevisionRow).where(ServiceRevisionRow.service_id == service_id)
                           .order_by(ServiceRevisionRow.revision)).all()
