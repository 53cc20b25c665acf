"""Job arrays in the store: creating an array's tasks, counting and listing them, cancelling them.

An array is one workload row of kind `array` (its spec is the job spec with `array:`; the scheduler never
places it) and one `job` row per task, naming the array in `parent_id` with its index in `array_index`.
The tasks are written with the array in the submit's transaction, as two bulk statements (the rows, then
their `submitted` events with one INSERT ... SELECT), so a 10,000-task array is accepted in about a second
and a crash leaves either the whole array or nothing. The array's status follows its tasks
(`server/workers/arrays.py`); the scheduler offers at most the array's cap of tasks at once
(`pending_to_offer`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Container, Mapping, Sequence
from typing import Any, NamedTuple, cast

from sqlalchemy import Table, func, insert, literal, select
from sqlalchemy.orm import Session

from gpupool.domain.arrays import (
    ARRAY_ENV,
    ARRAY_KIND,
    ArraySpec,
    parse_array,
    pool_task_bound,
    task_slots,
    task_spec,
)
from gpupool.domain.errors import GpupoolError, NotFoundError, ValidationError
from gpupool.domain.lifecycle import set_controller_status
from gpupool.domain.nodes import Node
from gpupool.domain.specs import parse_spec
from gpupool.domain.status import WorkloadStatus, parse_status, transition
from gpupool.server.api import schemas
from gpupool.store.orm import EventRow, WorkloadRow

_S = WorkloadStatus
OfferBound = Callable[[dict[str, Any]], "int | None"]  # an uncapped array's spec -> tasks to offer (None: all)
_HOLDING = [_S.SCHEDULED.value, _S.STARTING.value, _S.RUNNING.value, _S.PREEMPTED.value]


def add_tasks(session: Session, array: WorkloadRow, spec: ArraySpec, now: float) -> int:
    """Insert one pending `job` row per index of `spec` under `array` (already flushed), each with a
    `submitted` event; returns how many."""
    canonical = array.spec
    # what a task beyond the cap shows until the scheduler is offered it and gives its own reason
    waiting = f"array {array.id} runs at most {spec.limit} task(s) at once; waiting for a turn" if spec.limit else None
    rows = [
        {
            "name": array.name,
            "kind": "job",
            "project_id": array.project_id,
            "queue": array.queue,
            "user_id": array.user_id,
            "spec": task_spec(canonical, index),
            "status": _S.PENDING.value,
            "priority": array.priority,
            "replica_count": array.replica_count,
            "submitted_at": now,
            "updated_at": now,
            "attempt": 0,
            "retries_used": 0,
            "preemptions": 0,
            "message": "submitted",
            "parent_id": array.id,
            "array_index": index,
            "pending_reason": waiting,
        }
        for index in spec.indices
    ]
    # Core executemany: the ORM's per-row bookkeeping cost several times more; RETURNING (multi-row VALUES)
    # was slower still on PostgreSQL
    session.execute(insert(cast(Table, WorkloadRow.__table__)), rows)
    events = select(WorkloadRow.id, literal(now), literal(f"task of array {array.id}, submitted with it")).where(
        WorkloadRow.parent_id == array.id
    )
    session.execute(insert(EventRow).from_select(["workload_id", "at", "reason"], events))
    return len(rows)


def array_spec_of(row: WorkloadRow) -> ArraySpec | None:
    """The ArraySpec of an array's row (None for any other workload)."""
    if row.kind != ARRAY_KIND or row.spec.get("array") is None:
        return None
    return parse_array(row.spec["array"])


def task_counts(session: Session, array_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """For each array id: how many of its tasks are in each status (one GROUP BY)."""
    if not array_ids:
        return {}
    query = (
        select(WorkloadRow.parent_id, WorkloadRow.status, func.count(WorkloadRow.id))
        .where(WorkloadRow.parent_id.in_(sorted(set(array_ids))), WorkloadRow.array_index.is_not(None))
        .group_by(WorkloadRow.parent_id, WorkloadRow.status)
    )
    out: dict[int, dict[str, int]] = defaultdict(dict)
    for parent_id, status, count in session.execute(query).all():
        if parent_id is not None:  # always set: the query selects tasks
            out[parent_id][str(status)] = int(count)
    return dict(out)


def array_summary(row: WorkloadRow, counts: Mapping[str, int]) -> schemas.ArraySummary:
    """How an array is doing: its indices as written, the cap, the tasks by status."""
    spec = array_spec_of(row)
    return schemas.ArraySummary(
        indices=spec.text if spec else "",
        limit=spec.limit if spec else None,
        tasks=sum(counts.values()),
        by_status=dict(counts),
    )


def task_page(
    session: Session, array_id: int, limit: int, after: int | None = None, statuses: Sequence[str] = ()
) -> schemas.ArrayTaskPage:
    """Up to `limit` tasks of the array in index order, those with an index above `after` (a keyset cursor:
    a page costs its own rows whatever its depth), only those in `statuses` when given; `next_after` is set
    when more tasks follow."""
    query = select(WorkloadRow.array_index, WorkloadRow.id, WorkloadRow.status, WorkloadRow.message).where(
        WorkloadRow.parent_id == array_id, WorkloadRow.array_index.is_not(None)
    )
    if after is not None:
        query = query.where(WorkloadRow.array_index > after)
    if statuses:
        query = query.where(WorkloadRow.status.in_(sorted({parse_status(s).value for s in statuses})))
    found = session.execute(query.order_by(WorkloadRow.array_index).limit(limit + 1)).all()
    tasks = [
        schemas.ArrayTask(index=index, id=wid, status=status, message=message or "")
        for index, wid, status, message in found[:limit]
        if index is not None  # always set: the query selects tasks
    ]
    more = len(found) > limit and bool(tasks)
    return schemas.ArrayTaskPage(tasks=tasks, next_after=tasks[-1].index if more else None)


def require_array(row: WorkloadRow) -> None:
    """ValidationError unless `row` is a job array (its tasks are asked for)."""
    if row.kind != ARRAY_KIND:
        raise ValidationError(f"workload {row.id} is a {row.kind}, not an array; address it as {row.id}", "index")


def task_row(session: Session, array: WorkloadRow, index: int) -> WorkloadRow:
    """Task `index` of `array`; NotFoundError naming the indices when there is no such task."""
    require_array(array)
    found = session.scalars(
        select(WorkloadRow).where(WorkloadRow.parent_id == array.id, WorkloadRow.array_index == index)
    ).first()
    if found is None:
        spec = array_spec_of(array)
        raise NotFoundError(f"array {array.id} has no task {index}; its indices are {spec.text if spec else '?'}")
    return found


def cancel_tasks(session: Session, array: WorkloadRow, reason: str, now: float) -> int:
    """Cancel every task of `array` that has not ended (in the caller's transaction); live replicas are
    marked for stopping. Returns how many were cancelled."""
    from gpupool.server.services.workloads import request_stop  # noqa: PLC0415  (workloads imports this module)

    live = session.scalars(
        select(WorkloadRow)
        .where(
            WorkloadRow.parent_id == array.id,
            WorkloadRow.array_index.is_not(None),
            WorkloadRow.status.not_in([s.value for s in _S if s.is_terminal()]),
        )
        .order_by(WorkloadRow.id)
        .with_for_update()
    ).all()
    for task in live:
        transition(task, _S.CANCELLED, reason, now)
        if task.attempt:
            request_stop(session, task, now)
    return len(live)


class PendingRow(NamedTuple):
    """What the scheduler reads of a pending workload (plain columns, no ORM object); `spec` is None when the
    caller said it already knows the workload's spec (a spec does not change while its workload waits)."""

    id: int
    kind: str
    queue: str
    submitted_at: float
    nominated: list[Any] | None
    pending_reason: str | None
    queue_position: int | None
    fair_share_preempted_by: list[Any] | None
    spec: dict[str, Any] | None


_PENDING_COLUMNS = (WorkloadRow.id, WorkloadRow.kind, WorkloadRow.queue, WorkloadRow.submitted_at,
                    WorkloadRow.nominated, WorkloadRow.pending_reason, WorkloadRow.queue_position,
                    WorkloadRow.fair_share_preempted_by)
IDS_PER_QUERY = 2000  # ids in one IN list: far below SQLite's limit of bound parameters


def pending_to_offer(session: Session, uncapped_offer: OfferBound | None = None,
                     known_specs: Container[int] = frozenset()) -> list[PendingRow]:
    """The pending workloads the scheduler may see, oldest first: every one that is not an array task, and of
    each array's pending tasks the lowest indices that fit in its cap beside its tasks that hold resources.
    Tasks beyond a cap are counted in SQL and never loaded, so a capped 10,000-task array costs a cycle no
    more than its cap of rows. `uncapped_offer` (the array's spec -> how many tasks, None for all) bounds an
    array without a cap the same way: the scheduler passes how many such tasks its pool could hold at once,
    plus one. The specs of `known_specs` (workload ids) are not read (their `spec` is None)."""
    pending = _S.PENDING.value
    rows = list(session.execute(select(*_PENDING_COLUMNS).where(WorkloadRow.status == pending,
                                                                 WorkloadRow.array_index.is_(None))).all())
    waiting = session.scalars(
        select(WorkloadRow.parent_id)
        .where(WorkloadRow.status == pending, WorkloadRow.array_index.is_not(None))
        .group_by(WorkloadRow.parent_id)
    ).all()
    array_ids = sorted(int(a) for a in waiting if a is not None)
    specs = _array_specs(session, array_ids) if array_ids else {}
    limits = {a: _cap_of(spec) for a, spec in specs.items()}
    holding = _holding_counts(session, [a for a in array_ids if limits.get(a) is not None])
    for array_id in array_ids:
        slots = task_slots(limits.get(array_id), holding.get(array_id, 0))
        if slots is None and uncapped_offer is not None and array_id in specs:
            slots = uncapped_offer(specs[array_id])
        if slots == 0:
            continue
        query = (
            select(*_PENDING_COLUMNS)
            .where(
                WorkloadRow.parent_id == array_id, WorkloadRow.status == pending, WorkloadRow.array_index.is_not(None)
            )
            .order_by(WorkloadRow.array_index)
        )
        rows.extend(session.execute(query if slots is None else query.limit(slots)).all())
    rows.sort(key=lambda r: int(r.id))
    stored = stored_specs(session, [int(r.id) for r in rows if r.id not in known_specs])
    return [PendingRow(*row, spec=stored.get(int(row.id))) for row in rows]


def stored_specs(session: Session, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The stored spec of each workload of `ids` that exists, a few thousand ids per query."""
    found: dict[int, dict[str, Any]] = {}
    for start in range(0, len(ids), IDS_PER_QUERY):
        chunk = ids[start:start + IDS_PER_QUERY]
        found.update(session.execute(select(WorkloadRow.id, WorkloadRow.spec).where(WorkloadRow.id.in_(chunk))).all())
    return found


def uncapped_offer(nodes: Sequence[Node], reservations: int) -> OfferBound:
    """For `pending_to_offer`: how many of an uncapped array's pending tasks a cycle on `nodes` needs to see:
    the most the pool could hold at once (`pool_task_bound`), plus the blocked heads the cycle may reserve
    for (`reservations`: the profile's reservation depth, 0 without backfill), plus one that gets the
    scheduler's reason. The tasks beyond ask for exactly what that last one asked, after the cycle ran out of
    room and of reservations: it decides nothing for them. None (all) when the bound is unknown."""

    def offer(spec: dict[str, Any]) -> int | None:
        try:
            parsed = parse_spec(task_spec(spec, 0))
        except GpupoolError:
            return None  # the scheduler logs an unreadable spec for each task it loads
        elastic = parsed.min_available is not None  # a task may start with fewer replicas: count one each
        groups = [(1 if elastic else role.replicas, role.resources) for role in parsed.roles]
        bound = pool_task_bound(nodes, groups)
        return None if bound is None else bound + reservations + 1

    return offer


def _array_specs(session: Session, array_ids: list[int]) -> dict[int, dict[str, Any]]:
    rows = session.execute(select(WorkloadRow.id, WorkloadRow.spec).where(WorkloadRow.id.in_(array_ids))).all()
    return {int(array_id): spec for array_id, spec in rows if isinstance(spec, dict)}


def _cap_of(spec: Mapping[str, Any]) -> int | None:
    text: Any = spec.get("array")
    return parse_array(text).limit if isinstance(text, str) else None


def _holding_counts(session: Session, array_ids: list[int]) -> dict[int, int]:
    if not array_ids:
        return {}
    query = (
        select(WorkloadRow.parent_id, func.count(WorkloadRow.id))
        .where(WorkloadRow.parent_id.in_(array_ids), WorkloadRow.status.in_(_HOLDING))
        .group_by(WorkloadRow.parent_id)
    )
    return {p: int(n) for p, n in session.execute(query).all() if p is not None}


def array_env(session: Session, row: WorkloadRow) -> dict[str, str]:
    """The variables an array task's replicas get (empty for any other workload): GPUPOOL_ARRAY_INDEX (its
    index) and GPUPOOL_ARRAY_ID (the array's workload id)."""
    if row.array_index is None or row.parent_id is None:
        return {}
    return {ARRAY_ENV: str(row.array_index), "GPUPOOL_ARRAY_ID": str(row.parent_id)}


def status_moves(current: WorkloadStatus, target: WorkloadStatus) -> bool:
    """Whether an array in `current` moves towards `target`: not once it ended, and never back to pending (an
    array that started stays running while requeued tasks wait again)."""
    return not current.is_terminal() and target not in (current, _S.PENDING)


def sync_status(row: WorkloadRow, target: WorkloadStatus, reason: str, now: float) -> bool:
    """Move the array's row towards `target` with the controllers' one helper (`set_controller_status`:
    pending -> scheduled -> running on the way, as its tasks start); True when its status changed. A terminal
    array is left alone, and an array that started never goes back to pending."""
    if not status_moves(row.current_status, target):
        return False
    return bool(set_controller_status(row, target, reason, now, start_reason="its first task was placed"))
