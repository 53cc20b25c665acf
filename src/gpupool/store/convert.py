"""Conversions between stored rows / JSON columns and the pure domain and scheduler types."""

from __future__ import annotations

from typing import Any

from gpupool.domain.nodes import Gpu, MigInstance, Node, Taint
from gpupool.domain.placement import GpuAssignment, ReplicaPlacement
from gpupool.domain.queues import QueueSpec
from gpupool.domain.resources import ResourceVector, SharingMode
from gpupool.store.orm import NodeRow, QueueRow


def gpu_to_json(gpu: Gpu) -> dict[str, Any]:
    """A GPU as stored in the node row's `gpus` list."""
    return {
        "index": gpu.index, "model": gpu.model, "memory_mib": gpu.memory_mib, "mode": gpu.mode.value,
        "uuid": gpu.uuid, "nvlink_group": gpu.nvlink_group, "compute_slices": gpu.compute_slices,
        "mig_instances": [{"profile": m.profile, "uuid": m.uuid} for m in gpu.mig_instances],
        "healthy": gpu.healthy, "simulated": gpu.simulated,
    }


def gpu_from_json(data: dict[str, Any]) -> Gpu:
    """The inverse of gpu_to_json."""
    return Gpu(
        index=int(data["index"]), model=str(data["model"]), memory_mib=int(data["memory_mib"]),
        mode=SharingMode(data.get("mode", "exclusive")), uuid=str(data.get("uuid", "")),
        nvlink_group=data.get("nvlink_group"), compute_slices=int(data.get("compute_slices", 7)),
        mig_instances=tuple(MigInstance(m["profile"], m.get("uuid", "")) for m in data.get("mig_instances", [])),
        healthy=bool(data.get("healthy", True)), simulated=bool(data.get("simulated", False)),
    )


def node_from_row(row: NodeRow) -> Node:
    """The scheduler's view of a stored node."""
    return Node(
        name=row.name, cpu_milli=row.cpu_milli, memory_mib=row.memory_mib,
        gpus=tuple(gpu_from_json(g) for g in row.gpus), labels=dict(row.labels),
        taints=tuple(Taint(t["key"], t.get("value", "")) for t in row.taints), schedulable=row.schedulable,
    )


def queue_from_row(row: QueueRow) -> QueueSpec:
    """The scheduler's view of a stored queue."""
    limit = None
    if row.limit_cpu_milli is not None or row.limit_memory_mib is not None or row.limit_gpu_milli is not None:
        big = 2**62
        limit = ResourceVector(_or(row.limit_cpu_milli, big), _or(row.limit_memory_mib, big),
                               _or(row.limit_gpu_milli, big))
    return QueueSpec(
        name=row.name,
        guaranteed=ResourceVector(row.guaranteed_cpu_milli, row.guaranteed_memory_mib, row.guaranteed_gpu_milli),
        limit=limit, weight=row.weight, lend=row.lend, strict_fifo=row.strict_fifo,
    )


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def placement_to_json(p: ReplicaPlacement) -> dict[str, Any]:
    """A replica placement as stored in JSON columns."""
    return {
        "node": p.node, "cpu_milli": p.cpu_milli, "memory_mib": p.memory_mib, "role": p.role,
        "ordinal": p.ordinal,
        "gpus": [{"index": g.index, "milli": g.milli, "memory_mib": g.memory_mib, "mig_instance": g.mig_instance}
                 for g in p.gpus],
    }


def placement_from_json(data: dict[str, Any]) -> ReplicaPlacement:
    """The inverse of placement_to_json."""
    gpus = tuple(GpuAssignment(int(g["index"]), int(g["milli"]), int(g.get("memory_mib", 0)), g.get("mig_instance"))
                 for g in data.get("gpus", []))
    return ReplicaPlacement(str(data["node"]), int(data["cpu_milli"]), int(data["memory_mib"]), gpus,
                            str(data.get("role", "worker")), int(data.get("ordinal", 0)))
