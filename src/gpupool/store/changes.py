"""The store's change sequence: a counter that every transaction changing what the scheduling loop reads
increments, so that the loop can tell "nothing changed since my last pass" with one single-row read.

What counts as a change: any row inserted into or deleted from a tracked table, and any update of a tracked
table's column other than the ones listed as not read by the scheduler (`TRACKED`). Every session of the
`Database` carries three hooks (`install`):
- `before_flush` looks at the ORM unit of work (new, deleted, and changed attributes of dirty rows);
- `do_orm_execute` looks at statements run through the session (bulk INSERT / UPDATE / DELETE: any such
  statement on a tracked table counts, whatever its columns);
- `before_commit` of the outermost transaction flushes, and when something counted it runs
  `UPDATE change_counter SET seq = seq + 1` as the transaction's last statement.

Why a counter row updated in the committing transaction (and not a database sequence or a timestamp): a
reader that sees `seq = S` sees every transaction that incremented it to S or below, committed. The UPDATE
takes the row's write lock until COMMIT (PostgreSQL), and SQLite has one writer at a time, so the writer
that brings the counter to S+1 can only do so after the writer that brought it to S has committed; the
values are handed out in commit order. A sequence (`nextval`) is not: its values are taken before COMMIT, so
S+1 can become visible while S is still uncommitted. The increment is the last statement before COMMIT so
that the counter's lock is held for the shortest time and never before another lock of the transaction
(a transaction waiting on the counter holds nothing another transaction that holds the counter could need
afterwards: no deadlock).

Changes made outside these sessions (a raw connection, another program) are not counted; the scheduling
loop therefore still rebuilds from scratch every `FULL_REBUILD_S` (server/workers/scheduling.py).

A second counter row, the setup sequence (`SETUP_COUNTER_ID`), counts the same way the changes to what
requests read on every call and what rarely changes: accounts, tokens, memberships, projects, queues and the
nodes' capacity (`SETUP_TRACKED`); `store/setup_cache.py` keeps what is read from them while it stays the
same. A transaction that changes both increments counter 1 before counter 2 (always in id order: a
transaction waiting on the second holds only the first, which no holder of the second can need).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table, event, insert, inspect, select, update
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker
from sqlalchemy.orm.base import NO_VALUE

from gpupool.store.orm import ChangeCounterRow

COUNTER_ID = 1
SETUP_COUNTER_ID = 2
COUNTERS = (COUNTER_ID, SETUP_COUNTER_ID)
# table -> the columns whose updates the scheduler does not read (its outputs, and bookkeeping). Everything
# else in these tables counts, so a column added later counts until someone decides otherwise.
TRACKED: dict[str, frozenset[str]] = {
    "workloads": frozenset({"pending_reason", "queue_position", "message", "updated_at", "rendezvous_ports",
                            "name", "idempotency_key"}),
    "replicas": frozenset({"handle", "message", "exit_code", "started_at", "stop_sent_at", "endpoints"}),
    "nodes": frozenset({"heartbeat_at", "registered_at", "address", "source", "gpu_inventory", "gpu_backend",
                        "gpu_simulated"}),
    "queues": frozenset({"updated_at"}),
    "projects": frozenset({"max_idle_timeout_s"}),  # a project's deletion removes its queue (ON DELETE CASCADE)
}
# table -> the columns whose updates do not count for the setup sequence (a token's last use; the nodes' liveness)
SETUP_TRACKED: dict[str, frozenset[str]] = {
    "users": frozenset(), "memberships": frozenset(), "projects": frozenset(),
    "tokens": frozenset({"last_used_at"}),
    "queues": frozenset({"updated_at"}),
    "nodes": TRACKED["nodes"],
}
_TRACKED_BY_COUNTER = ((COUNTER_ID, TRACKED), (SETUP_COUNTER_ID, SETUP_TRACKED))
_TOUCHED = "gpupool.changes.touched"  # session.info: the set of counters this transaction increments
SEQ_KEY = "gpupool.changes.seq"  # session.info: the value the last commit of this session set the counter to
_COUNTER: Table = ChangeCounterRow.__table__  # type: ignore[assignment]
# built once (every transaction of the server runs one of them); run on the session's connection, past the ORM
_READ = {counter: select(_COUNTER.c.seq).where(_COUNTER.c.id == counter) for counter in COUNTERS}
_INCREMENT = {counter: update(_COUNTER).where(_COUNTER.c.id == counter).values(seq=_COUNTER.c.seq + 1)
              .returning(_COUNTER.c.seq) for counter in COUNTERS}  # `mark` refuses any other counter


def install(factory: sessionmaker[Session]) -> None:
    """Count the scheduler-visible changes of every session `factory` makes (see the module docstring)."""
    event.listen(factory, "before_flush", _before_flush)
    event.listen(factory, "do_orm_execute", _on_execute)
    event.listen(factory, "before_commit", _before_commit)
    event.listen(factory, "after_transaction_end", _after_transaction_end)


def ensure_counter(connection: Connection) -> None:
    """Add each counter row that is missing (a table emptied by hand, or a store older than the setup
    sequence); it starts at 0. For start-up, before any session counts."""
    present = set(connection.execute(select(_COUNTER.c.id)).scalars())
    for counter in COUNTERS:
        if counter not in present:
            connection.execute(insert(_COUNTER).values(id=counter, seq=0))


def current(session: Session, counter: int = COUNTER_ID) -> int | None:
    """The sequence of `counter` (one of `COUNTERS`) as this transaction sees it; None when its row is missing
    (then nothing can be concluded from it). One primary-key read."""
    value = session.connection().execute(_READ[counter]).scalar()
    return None if value is None else int(value)


def mark(session: Session, counter: int = COUNTER_ID) -> None:
    """Count this transaction as a change of `counter` (one of `COUNTERS`) whatever it writes (for writes the
    hooks cannot see)."""
    if counter not in COUNTERS:
        raise ValueError(f"no change counter {counter}; the counters are {COUNTERS}")
    _touched(session).add(counter)


def counted(session: Session, counter: int) -> bool:
    """True when this transaction has (so far, as flushed) changed what `counter` counts."""
    return counter in session.info.get(_TOUCHED, ())


def _touched(session: Session) -> set[int]:
    touched: set[int] = session.info.setdefault(_TOUCHED, set())
    return touched


def _table_of(row: object) -> str:
    return str(getattr(type(row), "__tablename__", ""))


def _changes_something(row: object, ignored: frozenset[str]) -> bool:
    """True when an attribute of `row` that the scheduler reads was given a value different from the one it
    had (an attribute whose old value was never loaded counts as changed)."""
    state: Any = inspect(row)
    for key, old in state.committed_state.items():
        if key in ignored:
            continue
        new = state.dict.get(key, NO_VALUE)
        if old is NO_VALUE or new is NO_VALUE or old != new:
            return True
    return False


def _before_flush(session: Session, _context: Any, _instances: Any) -> None:
    touched = _touched(session)
    for counter, tracked in _TRACKED_BY_COUNTER:
        if counter not in touched and _flush_changes(session, tracked):
            touched.add(counter)


def _flush_changes(session: Session, tracked: dict[str, frozenset[str]]) -> bool:
    """True when the unit of work inserts or deletes a row of a `tracked` table, or changes a counted column."""
    if any(_table_of(row) in tracked for row in (*session.new, *session.deleted)):
        return True
    for row in session.dirty:
        ignored = tracked.get(_table_of(row))
        if ignored is not None and _changes_something(row, ignored):
            return True
    return False


def _on_execute(state: ORMExecuteState) -> None:
    if not (state.is_insert or state.is_update or state.is_delete):
        return
    name = getattr(getattr(state.statement, "table", None), "name", None)
    for counter, tracked in _TRACKED_BY_COUNTER:
        if name in tracked:
            _touched(state.session).add(counter)


def _before_commit(session: Session) -> None:
    if session.get_nested_transaction() is not None:
        return  # a savepoint's release: the outermost commit counts
    session.flush()
    touched = session.info.pop(_TOUCHED, set())
    for counter in sorted(touched):  # in id order (see the module docstring)
        value = session.connection().execute(_INCREMENT[counter]).scalar()
        if counter == COUNTER_ID:
            session.info[SEQ_KEY] = value


def _after_transaction_end(session: Session, transaction: Any) -> None:
    if transaction.parent is None:  # the outermost one ended (committed or rolled back)
        session.info.pop(_TOUCHED, None)
