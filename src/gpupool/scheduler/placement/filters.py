"""Node filters: which nodes (and which GPUs on them) can take one replica now, and why the others cannot.

Every filter is vectorised over the snapshot's node rows. For GPU shares the check is exact per card
(compute milli and GPU memory); whole-GPU requests count fully free cards of an allowed model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gpupool.domain.resources import MILLI_PER_GPU, GpuRequest, ReplicaRequest
from gpupool.scheduler.snapshot import BoolArray, ClusterSnapshot, IntArray

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class ShareTerms:
    """Per card (node row x GPU column): whether a share fits, and the milli and memory it would take."""

    fits: BoolArray
    milli: IntArray
    memory: IntArray


def static_mask(snap: ClusterSnapshot, request: ReplicaRequest) -> BoolArray:
    """Nodes that are schedulable, match the node selector and whose taints the request tolerates.
    Cached on the snapshot (these attributes never change while it lives)."""
    key = ("static", request.node_selector, request.tolerations)
    cache = _static_cache(snap)
    mask = cache.get(key)
    if mask is None:
        wanted = [n.selected_by(request) and n.tolerated_by(request) for n in snap.nodes]
        mask = snap.schedulable & np.array(wanted, dtype=np.bool_)
        cache[key] = mask
    return mask


def gpu_model_mask(snap: ClusterSnapshot, gpu: GpuRequest) -> BoolArray:
    """Per card: the card is healthy, of an allowed model and has the requested minimum memory."""
    key = ("gpu", gpu.models, gpu.min_memory_mib)
    cache = _static_cache(snap)
    mask = cache.get(key)
    if mask is None:
        mask = snap.exists.copy()
        if gpu.models:
            for i, node in enumerate(snap.nodes):
                for j, card in enumerate(node.gpus):
                    mask[i, j] &= gpu.allows_model(card.model)
        if gpu.min_memory_mib:
            mask &= snap.gpu_mem_total >= gpu.min_memory_mib
        cache[key] = mask
    return mask


def _static_cache(snap: ClusterSnapshot) -> dict[object, BoolArray]:
    cache: dict[object, BoolArray] | None = snap.__dict__.get("_static_masks")
    if cache is None:
        cache = {}
        snap.__dict__["_static_masks"] = cache
    return cache


def share_terms(snap: ClusterSnapshot, gpu: GpuRequest, rows: IntArray | None = None) -> ShareTerms:
    """For a share request: per card of `rows` (default all), does it fit and what would it take.

    A share sized only by memory takes milli = ceil(memory / card memory * 1000); a share sized only by
    milli takes memory = floor(milli / 1000 * card memory); when both are given each is taken as asked.
    """
    sel = slice(None) if rows is None else rows
    milli, memory, usable = _share_sizes(snap, gpu)
    if by_largest_share(snap, gpu):
        fits: BoolArray = snap.share_largest[sel] >= gpu.share_milli
    else:
        fits = usable[sel] & (snap.free_milli[sel] >= milli[sel]) & (snap.free_gmem[sel] >= memory[sel])
    return ShareTerms(fits=fits, milli=milli[sel], memory=memory[sel])


def by_largest_share(snap: ClusterSnapshot, gpu: GpuRequest) -> bool:
    """Whether a card takes the share exactly when the snapshot's largest share for it is at least the share's
    milli: a share by milli alone (its memory is that part of the card's), of any model. Then `usable` is
    `share_ok` (for milli <= 1000; a larger share fits no card, and no card's largest share is above 1000)."""
    return bool(gpu.share_milli) and not (gpu.share_memory_mib or gpu.models or gpu.min_memory_mib)


def share_on_card(snap: ClusterSnapshot, gpu: GpuRequest, row: int, column: int) -> tuple[int, int] | None:
    """The milli and memory a share takes on card `column` of node `row` when it fits there now, else None:
    `share_terms` of that one card, read as scalars."""
    milli, memory, usable = _share_sizes(snap, gpu)
    take_milli, take_memory = int(milli[row, column]), int(memory[row, column])
    if (usable[row, column] and snap.free_milli[row, column] >= take_milli
            and snap.free_gmem[row, column] >= take_memory):
        return take_milli, take_memory
    return None


def _share_sizes(snap: ClusterSnapshot, gpu: GpuRequest) -> tuple[IntArray, IntArray, BoolArray]:
    """Per card of the whole snapshot: the milli and memory a share takes there, and whether the card could
    ever take it (shares allowed, an allowed model, at most one card's milli). These depend only on the
    nodes, so they are computed once per snapshot and request (read-only: callers get views of them)."""
    key = ("share", gpu.share_milli, gpu.share_memory_mib, gpu.models, gpu.min_memory_mib)
    cache: dict[object, tuple[IntArray, IntArray, BoolArray]] = snap.__dict__.setdefault("_share_sizes", {})
    sizes = cache.get(key)
    if sizes is None:
        total_mem = snap.gpu_mem_total
        if gpu.share_memory_mib:
            memory = np.full(total_mem.shape, gpu.share_memory_mib, dtype=np.int64)
            if gpu.share_milli:
                milli = np.full(total_mem.shape, gpu.share_milli, dtype=np.int64)
            else:  # ceil(memory * 1000 / card memory)
                milli = -((-gpu.share_memory_mib * MILLI_PER_GPU) // np.maximum(total_mem, 1))
        else:
            milli = np.full(total_mem.shape, gpu.share_milli, dtype=np.int64)
            memory = (gpu.share_milli * total_mem) // MILLI_PER_GPU
        usable = snap.share_ok & (milli <= MILLI_PER_GPU)
        if gpu.models or gpu.min_memory_mib:
            usable &= gpu_model_mask(snap, gpu)
        for array in (milli, memory, usable):
            array.setflags(write=False)
        sizes = cache[key] = (milli, memory, usable)
    return sizes


def whole_free_counts(snap: ClusterSnapshot, gpu: GpuRequest) -> IntArray:
    """Per node: fully free cards usable for whole-GPU requests of this model/memory constraint."""
    if not gpu.models and not gpu.min_memory_mib:
        return snap.full_free
    free = snap.whole_free_cards() & gpu_model_mask(snap, gpu)
    counts: IntArray = free.sum(axis=1).astype(np.int64)
    return counts


def capacity_mask(snap: ClusterSnapshot, request: ReplicaRequest) -> BoolArray:
    """Nodes with enough free CPU and memory (no GPU check)."""
    mask: BoolArray = (snap.free_cpu >= request.cpu_milli) & (snap.free_mem >= request.memory_mib)
    return mask


def feasible_mask(snap: ClusterSnapshot, request: ReplicaRequest, avoid_gpu_nodes: bool = True) -> BoolArray:
    """Nodes that can take one replica of `request` now.

    CPU-only work stays off GPU nodes when `avoid_gpu_nodes` and a CPU-only node fits.
    """
    mask = static_mask(snap, request) & capacity_mask(snap, request)
    gpu = request.gpu
    kind = gpu.kind
    if kind == "none":
        if avoid_gpu_nodes:
            cpu_only: BoolArray = mask & (snap.gpu_count == 0)
            if cpu_only.any():
                return cpu_only
        return mask
    if kind == "whole":
        return mask & (whole_free_counts(snap, gpu) >= gpu.count)
    if kind == "share":
        if not mask.any():
            return mask
        return mask & share_fits_any(snap, gpu)
    return mask & _mig_mask(snap, gpu)


def share_fits_any(snap: ClusterSnapshot, gpu: GpuRequest) -> BoolArray:
    """Per node: a card takes the share now (`share_terms(snap, gpu).fits.any(axis=1)`). A share by milli alone
    compares the snapshot's largest share per node; any other is kept per share size and recounted only for
    the nodes whose version changed: a version names one node state, even across clones, so the kept answers
    hold for any snapshot of these nodes (read-only: callers get the kept array)."""
    if by_largest_share(snap, gpu):  # the snapshot keeps each node's largest share by milli alone
        fits_any: BoolArray = snap.share_largest_node >= gpu.share_milli
        return fits_any
    key = ("share", gpu.share_milli, gpu.share_memory_mib, gpu.models, gpu.min_memory_mib)
    kept: dict[object, tuple[IntArray, BoolArray]] = snap.__dict__.setdefault("_share_fits_any", {})
    entry = kept.get(key)
    if entry is None:
        entry = kept[key] = (np.full(len(snap), -1, dtype=np.int64), np.zeros(len(snap), dtype=np.bool_))
    version, fits = entry
    changed = (version != snap.version).nonzero()[0]
    if changed.size:
        fits[changed] = np.logical_or.reduce(share_terms(snap, gpu, changed).fits, axis=1)
        version[changed] = snap.version[changed]
    return fits


def _mig_mask(snap: ClusterSnapshot, gpu: GpuRequest) -> BoolArray:
    mask = np.zeros(len(snap), dtype=np.bool_)
    profile = gpu.mig_profile or ""
    for row in snap.mig_nodes:
        free = snap.mig_free_instances(row, profile)
        cards = snap.nodes[row].gpus
        usable = [f for f in free if gpu.allows_model(cards[f[0]].model) and snap.exists[row, f[0]]]
        mask[row] = len(usable) >= gpu.count
    return mask


def explain_no_fit(snap: ClusterSnapshot, request: ReplicaRequest) -> str:
    """Why no node can take one replica now, counting nodes by their first failing check."""
    total = len(snap)
    if total == 0:
        return "the pool has no nodes"
    remaining = np.ones(total, dtype=np.bool_)
    reasons: list[str] = []

    def step(ok: BoolArray, label: str) -> None:
        nonlocal remaining
        failed = int((remaining & ~ok).sum())
        if failed:
            reasons.append(f"{failed} {label}")
        remaining &= ok

    step(snap.schedulable, "not schedulable")
    step(static_mask(snap, request), "excluded by node selector or taints")
    gpu = request.gpu
    if not gpu.is_none:
        if gpu.kind == "mig":
            has_card = _has_mig(snap, gpu)
        else:  # a card of an allowed model in a mode that takes this kind of request (shares: shared or mps)
            mode_ok = snap.share_ok if gpu.kind == "share" else snap.whole_ok
            has_card = np.asarray((gpu_model_mask(snap, gpu) & mode_ok).any(axis=1))
        step(has_card, f"without a {_gpu_words(gpu)}")
    step(snap.free_cpu >= request.cpu_milli, "with too little free CPU")
    step(snap.free_mem >= request.memory_mib, "with too little free memory")
    if not gpu.is_none:
        step(feasible_mask(snap, request, avoid_gpu_nodes=False), f"with too little free GPU for {gpu.describe()}")
    detail = "; ".join(reasons) if reasons else "no node has room"
    return f"0 of {total} nodes can take a replica ({request.describe()}): {detail}"


def _has_mig(snap: ClusterSnapshot, gpu: GpuRequest) -> BoolArray:
    mask = np.zeros(len(snap), dtype=np.bool_)
    for row in snap.mig_nodes:
        mask[row] = any(
            inst.profile == gpu.mig_profile and gpu.allows_model(card.model)
            for card in snap.nodes[row].gpus for inst in card.mig_instances
        )
    return mask


def _gpu_words(gpu: GpuRequest) -> str:
    if gpu.kind == "mig":
        return f"MIG {gpu.mig_profile} instance"
    parts = ["|".join(gpu.models) if gpu.models else "usable", "GPU"]
    if gpu.min_memory_mib:
        parts.append(f"with >= {gpu.min_memory_mib} MiB")
    if gpu.kind == "share":
        parts.append("that takes shares (shared or mps mode)")
    return " ".join(parts)
