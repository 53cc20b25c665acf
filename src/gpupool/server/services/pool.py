"""Nodes and queues: registering this host's nodes, what is allocated where, queue quotas and usage."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gpupool.domain.errors import NotFoundError, ValidationError, reject_unknown_keys
from gpupool.domain.queues import QueueSpec, parse_amounts
from gpupool.domain.resources import ResourceVector, format_cpu, format_gpu, format_memory
from gpupool.domain.status import WorkloadStatus
from gpupool.server.api import schemas
from gpupool.server.local_node import LocalNode
from gpupool.server.services import gpus as gpu_services
from gpupool.server.services.auth import Principal
from gpupool.store.convert import queue_from_row
from gpupool.store.orm import TERMINAL_REPLICA_STATES, NodeCordonRow, NodeRow, ReplicaRow, WorkloadRow
from gpupool.store.repos import accounts, nodes, queues, workloads
from gpupool.store.repos import gpus as gpu_repo


# ---------------------------------------------------------------------------------------- nodes
def register_local_nodes(session: Session, declared: Sequence[LocalNode], now: float,
                         source: str = "local") -> list[str]:
    """Make the stored nodes of `source` match `declared` at start-up: insert or update them with their GPU
    inventory (the cards then follow the stored per-GPU settings); nodes of that source no longer declared
    are removed, or made unschedulable while replicas still run on them. Returns what changed, in words."""
    changes: list[str] = []
    wanted = {n.node.name: n for n in declared}
    busy = {r.node for r in workloads.live_replicas(session)}
    for row in nodes.list_nodes(session):
        if row.source == source and row.name not in wanted:
            if row.name in busy:
                row.schedulable = False
                changes.append(f"node {row.name} is no longer declared; unschedulable until its replicas end")
            else:
                session.delete(row)
                changes.append(f"node {row.name} removed")
    session.flush()
    for local in declared:
        if upsert_node(session, local, source, now):
            changes.append(f"node {local.node.name} registered")
    session.flush()
    return changes


def upsert_node(session: Session, local: LocalNode, source: str, now: float) -> bool:
    """Insert or update one node with its GPU inventory and cards; True when it was new."""
    node = local.node
    row = nodes.node_by_name(session, node.name)
    values = {"cpu_milli": node.cpu_milli, "memory_mib": node.memory_mib, "labels": dict(node.labels),
              "taints": [{"key": t.key, "value": t.value} for t in node.taints],
              "schedulable": session.get(NodeCordonRow, node.name) is None,  # an admin's cordon stays
              "source": source, "address": local.address, "heartbeat_at": now,
              "gpu_inventory": local.gpus.inventory.to_dict(), "gpu_backend": local.gpus.kind,
              "gpu_simulated": local.gpus.simulated}
    new = row is None
    if row is None:
        row = NodeRow(name=node.name, registered_at=now, gpus=[], gpus_version=0, **values)
        session.add(row)
    else:
        for key, value in values.items():
            setattr(row, key, value)
    session.flush()
    settings = gpu_services.sync_settings(session, node.name, local.gpus.inventory, local.gpus.default_mode, now)
    gpu_services.refresh_node_gpus(session, row, settings)
    return new


def _allocations(session: Session) -> dict[str, ResourceVector]:
    per_node: dict[str, ResourceVector] = defaultdict(ResourceVector)
    for replica in workloads.live_replicas(session):
        p = replica.placement
        gpu = sum(int(g["milli"]) for g in p.get("gpus", []))
        per_node[replica.node] += ResourceVector(int(p["cpu_milli"]), int(p["memory_mib"]), gpu)
    return per_node


def _resources(v: ResourceVector) -> schemas.Resources:
    return schemas.Resources(cpu_milli=v.cpu_milli, memory_mib=v.memory_mib, gpu_milli=v.gpu_milli)


def list_nodes(session: Session) -> list[schemas.NodeInfo]:
    """Every node with its capacity, what is allocated on it, and each GPU (mode, health, MIG, MPS)."""
    per_node = _allocations(session)
    milli, held = gpu_services.allocations_by_gpu(session)
    settings = gpu_repo.all_settings(session)
    out = []
    for row in nodes.list_nodes(session, with_inventory=True):
        own = settings.get(row.name, {})
        gpus = [gpu_services.gpu_view(row.name, g, own.get(int(g["index"])), milli.get((row.name, int(g["index"])), 0),
                                      held) for g in row.gpus]
        capacity = ResourceVector(row.cpu_milli, row.memory_mib, 1000 * len(row.gpus))
        out.append(schemas.NodeInfo(
            name=row.name, source=row.source, schedulable=row.schedulable, capacity=_resources(capacity),
            allocated=_resources(per_node.get(row.name, ResourceVector())), gpus=gpus,
            labels={str(k): str(v) for k, v in row.labels.items()}, simulated_gpus=any(g.simulated for g in gpus),
            **gpu_services.inventory_facts(row)))
    return out


def node_info(session: Session, name: str) -> schemas.NodeInfo:
    """One node, as list_nodes shows it; NotFoundError when there is none of that name."""
    gpu_services.node_or_404(session, name)
    return next(n for n in list_nodes(session) if n.name == name)


# --------------------------------------------------------------------------------------- queues
def _queue_usage(session: Session) -> dict[str, ResourceVector]:
    usage: dict[str, ResourceVector] = defaultdict(ResourceVector)
    query = select(WorkloadRow.queue, ReplicaRow.placement).join(WorkloadRow, WorkloadRow.id == ReplicaRow.workload_id)
    live = ReplicaRow.state.not_in(sorted(TERMINAL_REPLICA_STATES))
    for queue, p in session.execute(query.where(live)):
        gpu = sum(int(g["milli"]) for g in p.get("gpus", []))
        usage[queue] += ResourceVector(int(p["cpu_milli"]), int(p["memory_mib"]), gpu)
    return usage


def _status_counts(session: Session) -> dict[tuple[str, str], int]:
    query = select(WorkloadRow.queue, WorkloadRow.status, func.count()).group_by(WorkloadRow.queue,
                                                                                 WorkloadRow.status)
    return {(q, s): int(n) for q, s, n in session.execute(query)}


def list_queues(session: Session) -> list[schemas.Queue]:
    """Every queue with its quota, usage and how many of its workloads run and wait."""
    usage = _queue_usage(session)
    counts = _status_counts(session)
    names = accounts.project_names_kept(session)
    active = [s.value for s in WorkloadStatus if s.is_active()]
    out = []
    for row in queues.list_queues(session):
        out.append(schemas.Queue(
            name=row.name, project=names.get(row.project_id, "?"),
            guaranteed=schemas.Resources(cpu_milli=row.guaranteed_cpu_milli, memory_mib=row.guaranteed_memory_mib,
                                         gpu_milli=row.guaranteed_gpu_milli),
            limit=schemas.ResourceLimit(cpu_milli=row.limit_cpu_milli, memory_mib=row.limit_memory_mib,
                                        gpu_milli=row.limit_gpu_milli),
            weight=row.weight, lend=row.lend, strict_fifo=row.strict_fifo,
            usage=_resources(usage.get(row.name, ResourceVector())),
            running=sum(counts.get((row.name, s), 0) for s in active),
            pending=counts.get((row.name, WorkloadStatus.PENDING.value), 0) +
            counts.get((row.name, WorkloadStatus.PREEMPTED.value), 0)))
    return out


def queue_specs(session: Session) -> dict[str, QueueSpec]:
    """Every queue as the scheduler sees it."""
    return {row.name: queue_from_row(row) for row in queues.list_queues(session)}


UNSET = "-"  # `--guaranteed cpu=-` (or null in the API): remove that resource's guarantee or ceiling
_RESOURCES = ("cpu", "memory", "gpu")


def _given(data: Mapping[str, Any], where: str) -> tuple[dict[str, Any], set[str]]:
    """The amounts a change sets, and the resources it unsets ("-" or null)."""
    if not isinstance(data, Mapping) or not all(isinstance(k, str) for k in data):
        raise ValidationError("expected a mapping such as {gpu: 2, memory: 64GiB}", where)
    reject_unknown_keys(dict(data), _RESOURCES, where)
    unset = {k for k, v in data.items() if v is None or v == UNSET}
    return {k: v for k, v in data.items() if k not in unset}, unset


def update_queue(session: Session, principal: Principal, name: str, body: schemas.QueueUpdate,
                 now: float) -> schemas.Queue:
    """Change a queue (administrators only). `guaranteed` and `limit` are merged into the queue's: a resource
    they name changes, "-" (or null) removes its guarantee or ceiling, the others stay; `limit: {}` removes
    every ceiling. The answer carries warnings when a guarantee, or all queues' together, exceed the pool."""
    principal.require_admin("change queues")
    row = queues.queue_by_name(session, name)
    if row is None:
        raise NotFoundError(f"queue {name!r} does not exist; every project has a queue of its name")
    if body.guaranteed is not None:
        values, unset = _given(body.guaranteed, "guaranteed")
        parsed = parse_amounts(values, "guaranteed").as_tuple()
        current = [row.guaranteed_cpu_milli, row.guaranteed_memory_mib, row.guaranteed_gpu_milli]
        merged = [0 if r in unset else parsed[i] if r in values else current[i] for i, r in enumerate(_RESOURCES)]
        row.guaranteed_cpu_milli, row.guaranteed_memory_mib, row.guaranteed_gpu_milli = merged
    if body.limit is not None:
        values, unset = _given(body.limit, "limit")
        parsed_limit = parse_limit(values)
        current_limit = [row.limit_cpu_milli, row.limit_memory_mib, row.limit_gpu_milli]
        merged_limit = [None if not body.limit or r in unset else parsed_limit[i] if r in values
                        else current_limit[i] for i, r in enumerate(_RESOURCES)]
        row.limit_cpu_milli, row.limit_memory_mib, row.limit_gpu_milli = merged_limit
    for key in ("weight", "lend", "strict_fifo"):
        value = getattr(body, key)
        if value is not None:
            setattr(row, key, value)
    queue_from_row(row)  # validates the combination (guarantee within limit, weight > 0)
    row.updated_at = now
    session.flush()
    result = next(q for q in list_queues(session) if q.name == name)
    result.warnings = guarantee_warnings(session, name)
    return result


def guarantee_warnings(session: Session, name: str) -> list[str]:
    """Warnings when queue `name`'s guarantee, or the sum of every queue's, is more than the pool holds."""
    rows = nodes.list_nodes(session)
    pool = ResourceVector(sum(r.cpu_milli for r in rows), sum(r.memory_mib for r in rows),
                          1000 * sum(len(r.gpus) for r in rows))
    specs = queue_specs(session)
    total = sum((q.guaranteed for q in specs.values()), ResourceVector())
    warnings = []
    for what, amount in ((f"the guarantee of queue {name} is", specs[name].guaranteed),
                         (f"the guarantees of all {len(specs)} queues add up to", total)):
        over = amount.exceeding(pool)
        if over:
            parts = ", ".join(f"{_describe(amount, r)} > {_describe(pool, r)}" for r in over)
            warnings.append(f"{what} more than the pool holds ({parts}); it cannot all be given at once")
        if len(specs) == 1:
            break  # one queue: its guarantee is the sum
    return warnings


def _describe(amount: ResourceVector, resource: str) -> str:
    value = {"cpu": amount.cpu_milli, "memory": amount.memory_mib, "gpu": amount.gpu_milli}[resource]
    text = {"cpu": format_cpu, "memory": format_memory, "gpu": format_gpu}[resource](value)
    return f"{resource} {text}"


def parse_limit(data: Mapping[str, Any]) -> tuple[int | None, int | None, int | None]:
    """A limit such as {gpu: 4}: resources it names get a ceiling, the others none."""
    reject_unknown_keys(dict(data), ("cpu", "memory", "gpu"), "limit")
    parsed = parse_amounts(dict(data), "limit")
    given = [key in data and data[key] is not None for key in ("cpu", "memory", "gpu")]
    if not all(isinstance(k, str) for k in data):
        raise ValidationError("resource names must be text", "limit")
    values = parsed.as_tuple()
    return (values[0] if given[0] else None, values[1] if given[1] else None, values[2] if given[2] else None)
