"""The usage ledger's counters: added to with one upsert per (hour, project, user), read per window."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from gpupool.domain.usage import HOUR_S, LedgerEntry
from gpupool.store.orm import UsageLedgerRow
from gpupool.store.repos import accounts

LedgerKey = tuple[float, int, int]  # (hour start, project id, user id)


def add(session: Session, counts: Mapping[LedgerKey, tuple[float, float, float]]) -> None:
    """Add (busy, idle, observed) seconds to each key's counters, creating the rows that do not exist yet
    (`INSERT ... ON CONFLICT DO UPDATE` on SQLite and PostgreSQL alike). Counters of a project deleted since
    are dropped (its rows went with it)."""
    projects = accounts.project_names(session)
    counts = {key: added for key, added in counts.items() if key[1] in projects}
    if not counts:
        return
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    values = [{"hour": hour, "project_id": project, "user_id": user, "busy_s": busy, "idle_s": idle,
               "observed_s": observed} for (hour, project, user), (busy, idle, observed) in sorted(counts.items())]
    statement = insert(UsageLedgerRow).values(values)
    table = UsageLedgerRow.__table__.c
    statement = statement.on_conflict_do_update(
        index_elements=["hour", "project_id", "user_id"],
        set_={"busy_s": table.busy_s + statement.excluded.busy_s, "idle_s": table.idle_s + statement.excluded.idle_s,
              "observed_s": table.observed_s + statement.excluded.observed_s})
    session.execute(statement)


def entries(session: Session, readable: frozenset[int] | None, since: float, until: float,
            pending: Mapping[LedgerKey, tuple[float, float, float]]) -> list[LedgerEntry]:
    """The ledger's counters of the hours overlapping [since, until] in the projects `readable` (None: every
    project), the stored rows plus the `pending` ones not flushed yet, with project and user names ("?" for a
    user that no longer exists)."""
    query = (select(UsageLedgerRow).where(UsageLedgerRow.hour > since - HOUR_S, UsageLedgerRow.hour <= until)
             .order_by(UsageLedgerRow.hour, UsageLedgerRow.project_id, UsageLedgerRow.user_id))
    if readable is not None:
        query = query.where(UsageLedgerRow.project_id.in_(sorted(readable)))
    counts = {(r.hour, r.project_id, r.user_id): (r.busy_s, r.idle_s, r.observed_s) for r in session.scalars(query)}
    for (hour, project, user), added in pending.items():
        if since - HOUR_S < hour <= until and (readable is None or project in readable):
            stored = counts.get((hour, project, user), (0.0, 0.0, 0.0))
            counts[(hour, project, user)] = (stored[0] + added[0], stored[1] + added[1], stored[2] + added[2])
    projects = accounts.project_names(session)
    users = accounts.user_names(session, {user for _, _, user in counts})
    return [LedgerEntry(hour, projects.get(project, "?"), users.get(user, "?"), *counts[(hour, project, user)])
            for hour, project, user in sorted(counts)]
