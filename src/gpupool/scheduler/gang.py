"""Gang helpers: the order in which a gang's replica groups are tried."""

from __future__ import annotations

from dataclasses import replace

from gpupool.domain.resources import MILLI_PER_GPU
from gpupool.scheduler.types import PendingWorkload, ReplicaGroup


def _size(group: ReplicaGroup) -> tuple[int, int, int]:
    gpu = group.request.gpu
    milli = MILLI_PER_GPU if gpu.kind == "share" and not gpu.share_milli else gpu.nominal_milli()
    return (-milli, -group.request.cpu_milli, -group.request.memory_mib)


def largest_first(workload: PendingWorkload) -> PendingWorkload:
    """The same workload with its replica groups in decreasing replica size (GPU, then CPU, then memory;
    a stable sort keeps the listed order among equal sizes). Greedy placement of the large replicas first
    fits gangs that the listed order does not (a 1-GPU chief placed first can split the card pairs a
    2-GPU worker needs)."""
    return replace(workload, groups=tuple(sorted(workload.groups, key=_size)))
