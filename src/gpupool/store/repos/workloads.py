"""Workloads, their replicas and events."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, Select, Table, bindparam, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, make_transient_to_detached

from gpupool.domain.replicas import ReplicaState
from gpupool.domain.status import WorkloadStatus
from gpupool.store import changes, event_log
from gpupool.store.orm import EventRow, ReplicaRow, WorkloadRow

# The statuses and replica states that are not terminal, named rather than "not terminal": `IN (...)` is
# found through the status (state) index, `NOT IN (...)` reads every row ever stored (the workers ask for the
# live rows several times a second, and the tables keep all history).
LIVE_STATUSES = sorted(s.value for s in WorkloadStatus if not s.is_terminal())
LIVE_REPLICA_STATES = sorted(s.value for s in ReplicaState if not s.is_terminal)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadFilter:
    """What `list_workloads` returns: project ids (None: all), statuses (empty: all), newest first."""

    project_ids: frozenset[int] | None = None
    statuses: tuple[str, ...] = ()
    name: str | None = None
    limit: int = 50
    before_id: int | None = None  # page: only workloads with a smaller id
    array_tasks: bool = False  # include the tasks of job arrays (listed folded into their array otherwise)
    kinds: tuple[str, ...] = ()  # empty: every kind
    user_ids: frozenset[int] | None = None  # None: every user


def workload_by_id(session: Session, workload_id: int, for_update: bool = False) -> WorkloadRow | None:
    """The workload, or None; `for_update` locks the row (PostgreSQL) until the transaction ends."""
    query = select(WorkloadRow).where(WorkloadRow.id == workload_id)
    if for_update:
        query = query.with_for_update()
    return session.scalar(query)


def workloads_by_ids(session: Session, ids: Collection[int], for_update: bool = False) -> dict[int, WorkloadRow]:
    """The workloads of `ids` that exist, by id, in one query; `for_update` locks them in id order."""
    if not ids:
        return {}
    query = select(WorkloadRow).where(WorkloadRow.id.in_(sorted(ids))).order_by(WorkloadRow.id)
    if for_update:
        query = query.with_for_update()
    return {row.id: row for row in session.scalars(query).all()}


def workload_by_key(session: Session, user_id: int, key: str) -> WorkloadRow | None:
    """The workload the user submitted with this idempotency key, or None (the id is looked up with a statement
    built once, the row read only when there is one). Rows added to the session are flushed first, as an ORM
    query would."""
    session.flush()  # nothing to do (and nearly free) when nothing was added or changed
    found = session.connection().execute(_ID_BY_KEY, {"user_id": user_id, "key": key}).scalar()
    return None if found is None else session.get(WorkloadRow, found)


_WORKLOADS: Table = WorkloadRow.__table__  # type: ignore[assignment]
_EVENTS: Table = EventRow.__table__  # type: ignore[assignment]
# Built once: building a statement (its bound values, its cache key) cost more than running it
_ID_BY_KEY = select(_WORKLOADS.c.id).where(_WORKLOADS.c.user_id == bindparam("user_id"),
                                          _WORKLOADS.c.idempotency_key == bindparam("key"))
_INSERT_WORKLOAD = {
    name: dialect.insert(_WORKLOADS).on_conflict_do_nothing(index_elements=["user_id", "idempotency_key"])
    .returning(_WORKLOADS.c.id)
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))}
_INSERT_EVENT = insert(_EVENTS)
# every column but the id, at its default (None where it has none): what a new row holds unless told otherwise
_NEW_WORKLOAD = {column.name: column.default.arg if column.default is not None and column.default.is_scalar else None
                 for column in _WORKLOADS.columns if column.name != "id"}


def insert_workload(session: Session, values: dict[str, Any]) -> WorkloadRow | None:
    """Store a new workload with one INSERT (no unit of work, no savepoint) and return it as a row of `session`,
    as if it had been read back. `values` names columns; the others (but `id`) take their defaults. None when
    the user already has a workload with that `idempotency_key` (nothing is inserted: the caller reads that one
    instead)."""
    values = _NEW_WORKLOAD | values
    connection = session.connection()
    workload_id = connection.execute(_INSERT_WORKLOAD[connection.dialect.name], values).scalar()
    if workload_id is None:
        return None
    changes.mark(session)  # a new workload changes what the scheduler reads (run past the ORM's hooks)
    row = WorkloadRow(id=workload_id, **values)
    make_transient_to_detached(row)  # every column is set: nothing is left to load
    session.add(row)
    return row


def insert_event(session: Session, workload_id: int, at: float, reason: str) -> EventRow:
    """Record something that happened to a workload with one INSERT; returns the event as written (not a row of
    `session`: it is never changed afterwards)."""
    values = {"workload_id": workload_id, "at": at, "reason": reason, "from_status": None, "to_status": None,
              "replica": None}
    result = session.connection().execute(_INSERT_EVENT, values)
    return EventRow(id=result.inserted_primary_key[0], **values)  # type: ignore[index]


def _filtered(query: Select[tuple[WorkloadRow]], f: WorkloadFilter) -> Select[tuple[WorkloadRow]]:
    if f.project_ids is not None:
        query = query.where(WorkloadRow.project_id.in_(sorted(f.project_ids)))
    if f.statuses:
        query = query.where(WorkloadRow.status.in_(f.statuses))
    if f.name:
        query = query.where(WorkloadRow.name == f.name)
    if not f.array_tasks:
        query = query.where(WorkloadRow.array_index.is_(None))
    if f.kinds:
        query = query.where(WorkloadRow.kind.in_(f.kinds))
    if f.user_ids is not None:
        query = query.where(WorkloadRow.user_id.in_(sorted(f.user_ids)))
    return query


def list_workloads(session: Session, f: WorkloadFilter) -> Sequence[WorkloadRow]:
    """Workloads matching `f`, newest first, at most `f.limit`."""
    query = _filtered(select(WorkloadRow), f)
    if f.before_id is not None:
        query = query.where(WorkloadRow.id < f.before_id)
    return session.scalars(query.order_by(WorkloadRow.id.desc()).limit(f.limit)).all()


def count_workloads(session: Session, f: WorkloadFilter) -> int:
    """How many workloads match `f` (ignoring limit and paging)."""
    query = _filtered(select(func.count(WorkloadRow.id)), f)  # type: ignore[arg-type]
    return int(session.scalar(query) or 0)


def workloads_in(session: Session, statuses: Sequence[str], for_update: bool = False,
                 ids: Collection[int] | None = None) -> Sequence[WorkloadRow]:
    """Every workload in one of `statuses` (only those of `ids` when given), oldest first (the order in
    which `for_update` locks them, as every writer that locks several workloads does)."""
    query = select(WorkloadRow).where(WorkloadRow.status.in_(statuses)).order_by(WorkloadRow.id)
    if ids is not None:
        query = query.where(WorkloadRow.id.in_(sorted(ids)))
    if for_update:
        query = query.with_for_update()
    return session.scalars(query).all()


def live_replicas(session: Session) -> Sequence[ReplicaRow]:
    """Every replica that still holds resources (its state is not terminal), by workload and number."""
    query = select(ReplicaRow).where(ReplicaRow.state.in_(LIVE_REPLICA_STATES))
    return session.scalars(query.order_by(ReplicaRow.workload_id, ReplicaRow.number)).all()


def live_replica_holdings(session: Session) -> Sequence[Row[tuple[int, Any, float, float | None]]]:
    """(workload id, placement, created_at, stop_requested_at) of every replica that still holds resources, by
    workload and number: plain columns, for a reader that needs only what they hold (the scheduler)."""
    query = (select(ReplicaRow.workload_id, ReplicaRow.placement, ReplicaRow.created_at, ReplicaRow.stop_requested_at)
             .where(ReplicaRow.state.in_(LIVE_REPLICA_STATES)).order_by(ReplicaRow.workload_id, ReplicaRow.number))
    return session.execute(query).all()


def replicas_by_ids(session: Session, ids: Collection[int]) -> dict[int, ReplicaRow]:
    """The replicas of `ids` that exist, by id, in one query."""
    if not ids:
        return {}
    query = select(ReplicaRow).where(ReplicaRow.id.in_(sorted(ids)))
    return {row.id: row for row in session.scalars(query).all()}


def replicas_of(session: Session, workload_id: int, attempt: int | None = None) -> Sequence[ReplicaRow]:
    """A workload's replicas (of one attempt when given), by attempt and number."""
    query = select(ReplicaRow).where(ReplicaRow.workload_id == workload_id)
    if attempt is not None:
        query = query.where(ReplicaRow.attempt == attempt)
    return session.scalars(query.order_by(ReplicaRow.attempt, ReplicaRow.number)).all()


def current_replicas(session: Session, rows: Sequence[WorkloadRow]) -> dict[int, list[ReplicaRow]]:
    """The replicas of each workload's current run (its `attempt`), by workload id, in one query."""
    wanted = {row.id: row.attempt for row in rows if row.attempt}
    found: dict[int, list[ReplicaRow]] = {row.id: [] for row in rows}
    if not wanted:
        return found
    query = select(ReplicaRow).where(ReplicaRow.workload_id.in_(sorted(wanted)))
    for replica in session.scalars(query.order_by(ReplicaRow.workload_id, ReplicaRow.attempt, ReplicaRow.number)):
        if replica.attempt == wanted[replica.workload_id]:
            found[replica.workload_id].append(replica)
    return found


def events_of(session: Session, workload_id: int, limit: int = 200) -> Sequence[EventRow]:
    """A workload's most recent events (at most `limit`), oldest first."""
    query = select(EventRow).where(EventRow.workload_id == workload_id).order_by(EventRow.id.desc()).limit(limit)
    return list(reversed(session.scalars(query).all()))


def add_event(session: Session, workload_id: int, at: float, reason: str, replica: int | None = None) -> None:
    """Record something that happened to a workload without changing its status (written with the
    transaction's other events: store/event_log.py)."""
    event_log.add(session, workload_id, at, reason, replica=replica)
