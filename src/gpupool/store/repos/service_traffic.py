"""A service's traffic per minute: added to with one upsert per (service, minute), read for a window, and
pruned past the retention."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from gpupool.store.orm import ServiceTrafficRow, WorkloadRow

TrafficKey = tuple[int, float]  # (service id, minute start)
Counts = tuple[int, int, int]  # (requests, errors, tokens)


def add(session: Session, counts: Mapping[TrafficKey, Counts]) -> None:
    """Add each key's counts to its row, creating the rows that do not exist yet (`INSERT ... ON CONFLICT DO
    UPDATE` on SQLite and PostgreSQL alike). Counts of a service whose workload was deleted since are dropped."""
    ids = sorted({service for service, _ in counts})
    existing = set(session.scalars(select(WorkloadRow.id).where(WorkloadRow.id.in_(ids)))) if ids else set()
    values = [
        {"service_id": service, "minute": minute, "requests": r, "errors": e, "tokens": t}
        for (service, minute), (r, e, t) in sorted(counts.items())
        if service in existing
    ]
    if not values:
        return
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = insert(ServiceTrafficRow).values(values)
    table = ServiceTrafficRow.__table__.c
    statement = statement.on_conflict_do_update(
        index_elements=["service_id", "minute"],
        set_={
            "requests": table.requests + statement.excluded.requests,
            "errors": table.errors + statement.excluded.errors,
            "tokens": table.tokens + statement.excluded.tokens,
        },
    )
    session.execute(statement)


def prune(session: Session, before: float) -> int:
    """Delete every row of a minute before `before`; how many went."""
    result = session.execute(delete(ServiceTrafficRow).where(ServiceTrafficRow.minute < before))
    return int(getattr(result, "rowcount", 0) or 0)


def series(
    session: Session, service_id: int, since: float, pending: Mapping[TrafficKey, Counts]
) -> dict[float, Counts]:
    """The service's counts by minute from `since` on: the stored rows plus the `pending` ones not written yet."""
    query = select(ServiceTrafficRow).where(
        ServiceTrafficRow.service_id == service_id, ServiceTrafficRow.minute >= since
    )
    out = {r.minute: (r.requests, r.errors, r.tokens) for r in session.scalars(query)}
    for (service, minute), (r, e, t) in pending.items():
        if service == service_id and minute >= since:
            stored = out.get(minute, (0, 0, 0))
            out[minute] = (stored[0] + r, stored[1] + e, stored[2] + t)
    return out
