"""What a pending workload counts against quotas before it is placed (the one conversion every path uses).

Whole GPUs count 1000 milli each, MIG instances `mig_slice_milli` of their slices, shares their milli. A share
sized by GPU memory alone takes `memory_share_milli(memory, card memory)` of the card it lands on; before
placement it counts what it would take on the largest card it may use (the least it can take), so a pre-check
never refuses what the exact check at bind time would admit. Every final check (bind, preemption what-if)
uses the exact usage of the placement.
"""

from __future__ import annotations

import numpy as np

from gpupool.domain.resources import GpuRequest, ResourceVector
from gpupool.scheduler.placement.filters import gpu_model_mask
from gpupool.scheduler.snapshot import ClusterSnapshot
from gpupool.scheduler.types import PendingWorkload


def largest_card_memory(snap: ClusterSnapshot, gpu: GpuRequest) -> int:
    """Memory (MiB) of the largest shareable card `gpu` may use; 0 when there is none."""
    cache: dict[object, int] = snap.__dict__.setdefault("_largest_share_card", {})
    key = (gpu.models, gpu.min_memory_mib)
    if key not in cache:
        usable = snap.share_ok & snap.exists
        if gpu.models or gpu.min_memory_mib:
            usable = usable & gpu_model_mask(snap, gpu)
        cache[key] = int(np.where(usable, snap.gpu_mem_total, 0).max(initial=0))
    return cache[key]


def workload_demand(workload: PendingWorkload, snap: ClusterSnapshot) -> ResourceVector:
    """CPU, memory and GPU milli `workload` counts against its queue before placement (see module doc)."""
    groups = workload.groups
    if len(groups) == 1:  # the same integers without the zero vector and the scaling by 1 (asked per workload)
        group = groups[0]
        nominal = group.request.nominal(_card_for(snap, group.request.gpu))
        return nominal if group.count == 1 else nominal.scaled(group.count)
    total = ResourceVector()
    for group in groups:
        total = total + group.request.nominal(_card_for(snap, group.request.gpu)).scaled(group.count)
    return total


def _card_for(snap: ClusterSnapshot, gpu: GpuRequest) -> int | None:
    """The card memory a share sized by memory counts against (None for any other request)."""
    if gpu.kind == "share" and not gpu.share_milli:
        # no card it may use: it cannot be placed anyway; count a whole card rather than nothing
        return largest_card_memory(snap, gpu) or gpu.share_memory_mib
    return None
