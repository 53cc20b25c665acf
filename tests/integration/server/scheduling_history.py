"""Random histories for the scheduling loop's tests: a seeded pool (two projects and queues, two 4-GPU nodes)
written straight into a store, and random changes applied the same way to one or several stores (submits,
cancels, replica ends, requeues, stop requests, node and queue edits), so that two stores that saw the same
history hold the same rows, ids included."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpupool.domain.nodes import Gpu, Node
from gpupool.domain.replicas import ReplicaState
from gpupool.domain.specs import parse_spec
from gpupool.domain.status import WorkloadStatus, can_transition, transition
from gpupool.server.services.workloads import request_stop
from gpupool.store.convert import gpu_to_json
from gpupool.store.db import Database
from gpupool.store.orm import NodeRow, ProjectRow, QueueRow, ReplicaRow, UserRow, WorkloadRow

Change = Callable[[Session, float], None]
ACTIVE = ("scheduled", "starting", "running")


def seed(db: Database) -> None:
    """Migrate and add the pool: projects/queues `a` and `b`, user 1, nodes n1 and n2 (4 A100s each)."""
    db.migrate()
    with db.session() as session:
        session.add_all([ProjectRow(id=1, name="a", created_at=0.0), ProjectRow(id=2, name="b", created_at=0.0),
                         UserRow(id=1, name="u", created_at=0.0)])
        session.flush()
        session.add_all([QueueRow(name="a", project_id=1, updated_at=0.0, limit_cpu_milli=None,
                                  limit_memory_mib=None, limit_gpu_milli=None),
                         QueueRow(name="b", project_id=2, updated_at=0.0, limit_cpu_milli=None,
                                  limit_memory_mib=None, limit_gpu_milli=None)])
        for name in ("n1", "n2"):
            session.add(node_row(name, 4))


def node_row(name: str, gpus: int) -> NodeRow:
    """A node row of `gpus` A100-80GB cards, 64 CPUs, 512 GiB."""
    node = Node(name=name, cpu_milli=64_000, memory_mib=512 * 1024,
                gpus=tuple(Gpu(index=k, model="A100-80GB", memory_mib=81920) for k in range(gpus)))
    return NodeRow(name=node.name, cpu_milli=node.cpu_milli, memory_mib=node.memory_mib,
                   gpus=[gpu_to_json(g) for g in node.gpus], labels={}, taints=[], schedulable=True, source="test",
                   registered_at=0.0, heartbeat_at=0.0)


def submit_row(project: int, spec: dict[str, Any], now: float) -> WorkloadRow:
    """A pending workload row for `spec` (a job spec dict), as the submit path stores it."""
    parsed = parse_spec(spec)
    queue = "a" if project == 1 else "b"
    canonical = parsed.to_dict() | {"project": queue, "queue": queue}
    return WorkloadRow(name=parsed.name, kind="job", project_id=project, queue=queue, user_id=1, spec=canonical,
                       priority=parsed.priority, replica_count=parsed.replica_count, submitted_at=now,
                       updated_at=now, message="submitted", attempt=0, retries_used=0, preemptions=0)


def random_changes(rng: random.Random) -> list[Change]:
    """0 to 3 random changes (none a third of the time, so that passes with nothing new happen)."""
    if rng.random() < 0.35:
        return []
    makers = [_submit, _submit, _cancel, _end_replicas, _settle, _stop, _node_edit, _queue_edit]
    return [rng.choice(makers)(rng) for _ in range(rng.randint(1, 3))]


def apply(dbs: Sequence[Database], changes: Sequence[Change], now: float) -> None:
    """Apply `changes` to every store, one transaction per change."""
    for db in dbs:
        for change in changes:
            with db.session() as session:
                change(session, now)


def _submit(rng: random.Random) -> Change:
    gpu = rng.choice([0.5, 1, 1, 2, 4])
    spec: dict[str, Any] = {"kind": "job", "name": "j", "command": "x", "replicas": rng.choice([1, 1, 2]),
                            "priority": rng.choice(["low", "normal", "high"]),
                            "resources": {"cpu": 1, "memory": "1GiB", "gpu": gpu},
                            "preemptible": rng.random() < 0.8}
    if rng.random() < 0.5:
        spec["max_runtime"] = rng.choice([30, 90, 300])
    project = rng.choice([1, 2])
    return lambda session, now: session.add(submit_row(project, spec, now))


def _pick(session: Session, rng_value: float, statuses: Sequence[str]) -> WorkloadRow | None:
    rows = session.scalars(select(WorkloadRow).where(WorkloadRow.status.in_(statuses))
                           .order_by(WorkloadRow.id)).all()
    return rows[int(rng_value * len(rows))] if rows else None


def _cancel(rng: random.Random) -> Change:
    pick = rng.random()

    def change(session: Session, now: float) -> None:
        row = _pick(session, pick, ["pending", *ACTIVE])
        if row is not None:
            transition(row, WorkloadStatus.CANCELLED, "cancelled", now)
            request_stop(session, row, now)
    return change


def _live(session: Session) -> list[ReplicaRow]:
    return list(session.scalars(select(ReplicaRow).where(ReplicaRow.ended_at.is_(None)).order_by(ReplicaRow.id)))


def _end_replicas(rng: random.Random) -> Change:
    pick, stopping_first = rng.random(), rng.random() < 0.6

    def change(session: Session, now: float) -> None:
        live = _live(session)
        stopping = [r for r in live if r.stop_requested_at is not None]
        chosen = stopping if stopping_first and stopping else live
        if chosen:
            replica = chosen[int(pick * len(chosen))]
            replica.set_state(ReplicaState.STOPPED if replica.stop_requested_at else ReplicaState.SUCCEEDED, now)
    return change


def _settle(rng: random.Random) -> Change:
    """What the reconciler does for a workload whose replicas all ended: a preempted one is requeued, an
    active one ends; and a scheduled one starts running."""
    def change(session: Session, now: float) -> None:
        live = {r.workload_id for r in _live(session)}
        rows = session.scalars(select(WorkloadRow).where(WorkloadRow.status.in_(["preempted", *ACTIVE]))
                               .order_by(WorkloadRow.id)).all()
        for row in rows:
            if row.id in live:
                if row.status == "scheduled":
                    transition(row, WorkloadStatus.RUNNING, "started", now)
                    row.started_at = now
            elif row.status == "preempted":
                transition(row, WorkloadStatus.PENDING, "requeued", now)
                row.started_at = None
            else:
                done = WorkloadStatus.SUCCEEDED
                if not can_transition(row.current_status, done):
                    done = WorkloadStatus.FAILED
                transition(row, done, "its replicas ended", now)
    return change


def _stop(rng: random.Random) -> Change:
    pick = rng.random()

    def change(session: Session, now: float) -> None:
        row = _pick(session, pick, list(ACTIVE))
        if row is not None:
            request_stop(session, row, now)
    return change


def _node_edit(rng: random.Random) -> Change:
    what, gpus = rng.choice(["cordon", "label", "add", "remove"]), rng.choice([2, 4, 8])

    def change(session: Session, now: float) -> None:
        n2, n3 = session.get(NodeRow, "n2"), session.get(NodeRow, "n3")
        if what == "cordon" and n2 is not None:
            n2.schedulable = not n2.schedulable
        elif what == "label" and n2 is not None:
            n2.labels = {} if n2.labels else {"zone": "z1"}
        elif what == "add" and n3 is None:
            session.add(node_row("n3", gpus))
        elif what == "remove" and n3 is not None and not any(r.node == "n3" for r in _live(session)):
            session.delete(n3)
        n1 = session.get(NodeRow, "n1")
        if n1 is not None:
            n1.heartbeat_at = now  # not read by the scheduler: counts for nothing
    return change


def _queue_edit(rng: random.Random) -> Change:
    name, guaranteed = rng.choice(["a", "b"]), rng.choice([0, 2000, 4000])
    limit, weight = rng.choice([None, 4000, 6000]), rng.choice([1.0, 2.0])

    def change(session: Session, now: float) -> None:
        queue = session.get(QueueRow, name)
        assert queue is not None
        queue.guaranteed_gpu_milli, queue.limit_gpu_milli, queue.weight, queue.updated_at = \
            guaranteed, limit, weight, now
    return change


def store_view(db: Database) -> list[tuple[Any, ...]]:
    """What the scheduling loop writes, as stored: each workload's status and shown reason, position and
    nomination, and each replica's workload, node, placement and stop request."""
    with db.session(write=False) as session:
        workloads = [(w.id, w.status, w.pending_reason, w.queue_position, w.nominated, w.attempt)
                     for w in session.scalars(select(WorkloadRow).order_by(WorkloadRow.id))]
        replicas = [(r.id, r.workload_id, r.node, r.placement, r.state, r.stop_requested_at)
                    for r in session.scalars(select(ReplicaRow).order_by(ReplicaRow.id))]
    return [*workloads, *replicas]
