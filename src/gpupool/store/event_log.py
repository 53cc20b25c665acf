"""A workload's history rows (`events`) written in one statement per transaction, not one ORM object each.

A status change or a replica's news adds a row of values to the session (`add`), not an `EventRow` object to
its unit of work: the rows a transaction adds are inserted together, in the order they were added, by one
multi-row INSERT (the ORM's object for each row, its bookkeeping and its RETURNING of ids nobody reads cost
several times the INSERT itself; a reconciler pass writes dozens).

When they are written (`install` sets this up on a session factory):
- when the outermost transaction commits, before the change counters' increment (store/changes.py), so
  they commit with everything else the transaction did, or not at all;
- before any ORM statement the session runs outside a savepoint (a query of the events sees those added
  before it, as the ORM's autoflush would have shown it the objects);
- a savepoint's rows stay with it: its release hands them to the transaction around it, its rollback drops
  them; they are never inserted inside the savepoint, so a rolled-back savepoint cannot take rows added
  before it with it.
A transaction that rolls back drops the rows it added. Rows are values only: nothing is returned to read back.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Insert, Table, event, insert
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction, sessionmaker

_PENDING = "gpupool.events.pending"  # session.info: [(savepoint that added it or None, row values)]
_STATEMENT = "gpupool.events.insert"  # session.info (from the factory): the INSERT of the events table


def add(session: Session, workload_id: int, at: float, reason: str, *, replica: int | None = None,
        from_status: str | None = None, to_status: str | None = None) -> None:
    """Add one row to `workload_id`'s history, written as the module docstring says."""
    values = {"workload_id": workload_id, "at": at, "from_status": from_status, "to_status": to_status,
              "replica": replica, "reason": reason}
    if session.get_transaction() is None:
        session.begin()  # as `Session.add` would: the rows belong to a transaction (no connection is taken yet)
    session.info.setdefault(_PENDING, []).append((session.get_nested_transaction(), values))


def pending_count(session: Session) -> int:
    """How many rows `add` has given this session that are not written yet."""
    return len(session.info.get(_PENDING, ()))


def install(factory: sessionmaker[Session], events: Table) -> None:
    """Write the rows `add` gives the sessions of `factory` into `events`. Install it before the change
    counters (`changes.install`): the counters' increment must stay the last statement of a transaction."""
    factory.kw.setdefault("info", {})[_STATEMENT] = insert(events)
    event.listen(factory, "before_commit", _before_commit)
    event.listen(factory, "do_orm_execute", _before_orm_statement)
    event.listen(factory, "after_transaction_end", _after_transaction_end)


def write_pending(session: Session) -> None:
    """Insert every row not written yet (outside a savepoint only: see the module docstring)."""
    pending = session.info.get(_PENDING)
    if pending and session.get_nested_transaction() is None:
        session.info[_PENDING] = []
        statement: Insert = session.info[_STATEMENT]
        session.connection().execute(statement, [values for _, values in pending])


def _before_commit(session: Session) -> None:
    savepoint = session.get_nested_transaction()
    if savepoint is None:
        write_pending(session)
        return
    pending: list[tuple[Any, dict[str, Any]]] = session.info.get(_PENDING, [])
    outer = savepoint.parent if savepoint.parent is not None and savepoint.parent.nested else None
    session.info[_PENDING] = [(outer if owner is savepoint else owner, values) for owner, values in pending]


def _before_orm_statement(state: ORMExecuteState) -> None:
    if state.session.info.get(_PENDING):
        write_pending(state.session)


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.nested:  # rows still owned by it were not released with it: it rolled back
        pending = session.info.get(_PENDING)
        if pending:
            session.info[_PENDING] = [(owner, values) for owner, values in pending if owner is not transaction]
    elif transaction.parent is None:
        session.info.pop(_PENDING, None)
