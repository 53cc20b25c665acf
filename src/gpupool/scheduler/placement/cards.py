"""Choosing the cards (or MIG instances) on a chosen node."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gpupool.domain.resources import MILLI_PER_GPU, GpuRequest, SharingMode, mig_profile_slices
from gpupool.scheduler.placement.filters import gpu_model_mask
from gpupool.scheduler.snapshot import ClusterSnapshot, IntArray
from gpupool.scheduler.types import GpuAssignment


def choose_whole_cards(snap: ClusterSnapshot, row: int, gpu: GpuRequest) -> tuple[GpuAssignment, ...] | None:
    """`gpu.count` fully free cards on node `row`, or None.

    Preference: all cards inside one NVLink group (the group with the fewest free cards that suffices),
    then cards in `exclusive` mode before shareable ones (keeping shareable cards for shares), then the
    lowest indices.
    """
    node = snap.nodes[row]
    usable = snap.whole_free_cards(row) & gpu_model_mask(snap, gpu)[row]
    free_cols = [j for j in range(len(node.gpus)) if usable[j]]
    if len(free_cols) < gpu.count:
        return None

    def preference(j: int) -> tuple[int, int]:
        return (0 if node.gpus[j].mode == SharingMode.EXCLUSIVE else 1, j)

    chosen = _nvlink_choice(snap, row, free_cols, gpu.count, preference)
    if chosen is None:
        chosen = sorted(free_cols, key=preference)[: gpu.count]
    return tuple(
        snap.gpu_assignment(row, j, MILLI_PER_GPU, int(snap.gpu_mem_total[row, j])) for j in sorted(chosen)
    )


def _nvlink_choice(snap: ClusterSnapshot, row: int, free_cols: list[int], count: int,
                   preference: Callable[[int], tuple[int, int]]) -> list[int] | None:
    if count < 2:
        return None
    node = snap.nodes[row]
    groups: dict[int, list[int]] = {}
    for j in free_cols:
        group = node.gpus[j].nvlink_group
        if group is not None:
            groups.setdefault(group, []).append(j)
    fitting = sorted((len(cols), gid) for gid, cols in groups.items() if len(cols) >= count)
    if not fitting:
        return None
    cols = groups[fitting[0][1]]
    return sorted(cols, key=preference)[:count]


def choose_mig_instances(snap: ClusterSnapshot, row: int, gpu: GpuRequest) -> tuple[GpuAssignment, ...] | None:
    """`gpu.count` free MIG instances of the requested profile on node `row`, packing the cards that
    have the fewest free instances of that profile first; None when there are not enough."""
    node = snap.nodes[row]
    free = [(j, k) for j, k in snap.mig_free_instances(row, gpu.mig_profile or "")
            if gpu.allows_model(node.gpus[j].model) and snap.exists[row, j]]
    if len(free) < gpu.count:
        return None
    per_card: dict[int, int] = {}
    for j, _ in free:
        per_card[j] = per_card.get(j, 0) + 1
    free.sort(key=lambda jk: (per_card[jk[0]], jk[0], jk[1]))
    result = []
    for j, k in free[: gpu.count]:
        card = node.gpus[j]
        inst = card.mig_instances[k]
        memory = _mig_memory(card.memory_mib, inst.profile)
        result.append(GpuAssignment(index=card.index, milli=card.mig_milli(inst), memory_mib=memory, mig_instance=k))
    return tuple(result)


def _mig_memory(card_memory_mib: int, profile: str) -> int:
    _, gigabytes = mig_profile_slices(profile)
    return int(min(card_memory_mib, gigabytes * 1024))


def share_slots(snap: ClusterSnapshot, milli: int) -> IntArray:
    """Per node: how many shares of `milli` its shareable cards could still take."""
    slots: IntArray = np.where(snap.share_ok, snap.free_milli // max(milli, 1), 0).sum(axis=1)
    return slots
