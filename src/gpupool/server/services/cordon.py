"""Cordon, uncordon and drain a node (administrators). A cordon is stored in its own row (node registration
rewrites the nodes row but keeps `schedulable` False while the cordon exists), so it survives restarts; the
scheduler places nothing new on an unschedulable node. Draining cordons the node first (stored intent), then
preempts every active workload with a replica on it, as the scheduler's preemption does: the workload goes
back to the queue (preempted) and its replicas are stopped (a service replica's once drained), so it runs
again elsewhere. Both are idempotent."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpupool.server.services.auth import Principal
from gpupool.server.services.gpus import node_or_404
from gpupool.server.services.workloads import preempt
from gpupool.store.orm import TERMINAL_REPLICA_STATES, NodeCordonRow, ReplicaRow
from gpupool.store.repos import workloads as repo

MAX_REASON_CHARS = 500  # a sentence or two; longer text is cut


def cordon(session: Session, principal: Principal, node: str, reason: str, now: float) -> bool:
    """Mark `node` unschedulable until uncordoned; True when it was not cordoned before."""
    principal.require_admin("cordon nodes")
    row = node_or_404(session, node, lock=True)
    row.schedulable = False
    if session.get(NodeCordonRow, node) is not None:
        return False
    session.add(NodeCordonRow(node=node, reason=(reason.strip() or "cordoned")[:MAX_REASON_CHARS],
                              by_user=principal.name, since=now))
    session.flush()
    return True


def uncordon(session: Session, principal: Principal, node: str) -> bool:
    """Let `node` take work again; True when it was cordoned."""
    principal.require_admin("uncordon nodes")
    row = node_or_404(session, node, lock=True)
    found = session.get(NodeCordonRow, node)
    row.schedulable = True
    if found is None:
        return False
    session.delete(found)
    session.flush()
    return True


def drain(session: Session, principal: Principal, node: str, now: float) -> list[int]:
    """Cordon `node` and preempt the active workloads running on it; returns their ids."""
    cordon(session, principal, node, f"drained by {principal.name}", now)
    query = (select(ReplicaRow.workload_id).where(ReplicaRow.node == node,
                                                  ReplicaRow.state.not_in(sorted(TERMINAL_REPLICA_STATES)))
             .distinct().order_by(ReplicaRow.workload_id))
    moved = []
    for workload_id in session.scalars(query).all():
        row = repo.workload_by_id(session, workload_id, for_update=True)
        if row is None or not row.current_status.is_active():
            continue
        preempt(session, row, f"node {node} is being drained by {principal.name}", now)  # services drain first
        moved.append(workload_id)
    return moved


def cordons(session: Session) -> dict[str, NodeCordonRow]:
    """Every cordon by node name."""
    return {row.node: row for row in session.scalars(select(NodeCordonRow)).all()}
