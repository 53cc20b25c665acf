"""GPU fragmentation measures against a target workload.

The target workload is a set of request shapes m (CPU c_m, memory r_m, GPU count n_m, milli per GPU u_m,
allowed models) with probabilities p_m. For one node with free CPU C, free memory R, and free milli f_g
on each usable card g (total T = sum f_g):

**Paper measure** (Weng et al., "Beware of Fragmentation", USENIX ATC 2023, and the trace's SOURCE.md):
shape m *runs* on the node when C >= c_m, R >= r_m, a card model is allowed and at least n_m cards have
f_g >= u_m. F(n, m) = sum of f_g over the cards with f_g < u_m when m runs, else T (every idle milli);
CPU-only shapes count T. F(n) = sum_m p_m F(n, m).

**Capacity measure** (ours): how much of T the shape could actually use if the node were filled with
copies of it. k_m = min(floor(sum_g floor(f_g / u_m) / n_m), floor(C / c_m), floor(R / r_m)) copies fit,
using k_m n_m u_m milli; F_cap(n, m) = T - k_m n_m u_m (T for CPU-only shapes and disallowed models).
It also sees GPUs stranded by CPU or memory that the node can no longer feed, which the paper measure
only notices once a shape cannot run at all.

Both measures only need three per-node, per-shape counts (`CardTerms`), which change by a closed form
when one card's free milli changes from a to b — the basis of the cheap incremental scoring in fgd.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from gpupool.domain.resources import MILLI_PER_GPU, ReplicaRequest, model_matches
from gpupool.scheduler.placement.filters import FloatArray
from gpupool.scheduler.snapshot import BoolArray, ClusterSnapshot, IntArray

DEFAULT_COVERAGE = 0.95
_NO_LIMIT = np.int64(1) << 40


@dataclass(frozen=True, slots=True)
class TargetShape:
    """One typical request: CPU, memory, number of GPUs, milli per GPU, allowed models, probability."""

    cpu_milli: int
    memory_mib: int
    num_gpu: int
    gpu_milli: int
    models: tuple[str, ...] = ()
    probability: float = 0.0


def shape_of(request: ReplicaRequest) -> TargetShape | None:
    """The target-workload shape of a request (None for MIG and memory-only shares, which are ignored)."""
    gpu = request.gpu
    kind = gpu.kind
    if kind == "mig" or (kind == "share" and not gpu.share_milli):
        return None
    num, milli = {"none": (0, 0), "whole": (gpu.count, MILLI_PER_GPU), "share": (1, gpu.share_milli)}[kind]
    return TargetShape(request.cpu_milli, request.memory_mib, num, milli, gpu.models)


def target_from_requests(requests: Iterable[ReplicaRequest], coverage: float = DEFAULT_COVERAGE) -> list[TargetShape]:
    """The most frequent shapes of `requests` that together cover `coverage` of them, renormalised.
    Ties in frequency are broken by the shape itself, so the result is deterministic."""
    counts = Counter(s for s in map(shape_of, requests) if s is not None)
    total = sum(counts.values())
    if not total:
        return []
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], _shape_key(kv[0])))
    chosen, covered = [], 0
    for shape, count in ranked:
        chosen.append((shape, count))
        covered += count
        if covered >= coverage * total:
            break
    return [TargetShape(s.cpu_milli, s.memory_mib, s.num_gpu, s.gpu_milli, s.models, c / covered) for s, c in chosen]


def _shape_key(s: TargetShape) -> tuple[int, int, int, int, tuple[str, ...]]:
    return (s.cpu_milli, s.memory_mib, s.num_gpu, s.gpu_milli, s.models)


class TargetArrays:
    """The target workload as arrays (one entry per shape), with per-node model compatibility."""

    def __init__(self, shapes: Sequence[TargetShape], snap: ClusterSnapshot) -> None:
        self.cpu = np.array([s.cpu_milli for s in shapes], dtype=np.int64)
        self.mem = np.array([s.memory_mib for s in shapes], dtype=np.int64)
        self.num = np.array([s.num_gpu for s in shapes], dtype=np.int64)
        self.need = np.array([max(s.gpu_milli, 1) for s in shapes], dtype=np.int64)
        self.prob = np.array([s.probability for s in shapes], dtype=np.float64)
        self.whole_slots = MILLI_PER_GPU // self.need  # slots one fully free card holds per shape
        self.model_ok = np.zeros((len(snap), len(shapes)), dtype=np.bool_)
        for i, node in enumerate(snap.nodes):
            models = {g.model for g in node.gpus}
            for k, shape in enumerate(shapes):
                self.model_ok[i, k] = shape.num_gpu > 0 and bool(models) and (
                    not shape.models or any(model_matches(m, g) for m in shape.models for g in models))


@dataclass(frozen=True, slots=True)
class CardTerms:
    """Per node (leading axes) and shape (last axis): cards with f >= u, milli on cards with f < u, and
    sum of floor(f / u)."""

    count: IntArray
    frag: IntArray
    slots: IntArray

    def changed(self, before: IntArray, after: IntArray, need: IntArray) -> CardTerms:
        """The terms after one card per node goes from `before` to `after` free milli (broadcasting)."""
        return CardTerms(
            self.count - (before >= need) + (after >= need),
            self.frag - np.where(before < need, before, 0) + np.where(after < need, after, 0),
            self.slots - before // need + np.maximum(after, 0) // need,
        )

    def whole_taken(self, cards: int, target: TargetArrays) -> CardTerms:
        """The terms after `cards` fully free cards are taken."""
        return CardTerms(self.count - cards, self.frag, self.slots - cards * target.whole_slots)


def usable_free(snap: ClusterSnapshot, rows: IntArray | slice) -> IntArray:
    """Free milli of the cards that take whole GPUs or shares (MIG and unhealthy cards count 0)."""
    result: IntArray = np.where(snap.whole_ok[rows] | snap.share_ok[rows], snap.free_milli[rows], 0)
    return result


def card_terms(free: IntArray, target: TargetArrays) -> CardTerms:
    """CardTerms of nodes whose cards have `free` milli (rows x cards)."""
    need = target.need[None, :, None]
    cards = free[:, None, :]
    enough = cards >= need
    return CardTerms(
        enough.sum(axis=2).astype(np.int64),
        np.where(enough, 0, cards).sum(axis=2).astype(np.int64),
        (cards // need).sum(axis=2).astype(np.int64),
    )


def paper_fragment(target: TargetArrays, cpu: IntArray, mem: IntArray, model_ok: BoolArray, terms: CardTerms,
                   total: IntArray) -> FloatArray:
    """The paper measure F(n) = sum_m p_m F(n, m) (any leading axes; shapes on the last)."""
    runs = ((cpu[..., None] >= target.cpu) & (mem[..., None] >= target.mem) & model_ok
            & (terms.count >= target.num))
    result: FloatArray = np.where(runs, terms.frag, total[..., None]) @ target.prob
    return result


def capacity_fragment(target: TargetArrays, cpu: IntArray, mem: IntArray, model_ok: BoolArray, terms: CardTerms,
                      total: IntArray) -> FloatArray:
    """The capacity measure F_cap(n) = sum_m p_m (T - k_m n_m u_m) (see the module docstring)."""
    by_cpu = np.where(target.cpu > 0, cpu[..., None] // np.maximum(target.cpu, 1), _NO_LIMIT)
    by_mem = np.where(target.mem > 0, mem[..., None] // np.maximum(target.mem, 1), _NO_LIMIT)
    copies = np.minimum(np.minimum(by_cpu, by_mem), terms.slots // np.maximum(target.num, 1))
    copies = np.where(model_ok, np.maximum(copies, 0), 0)
    result: FloatArray = (total[..., None] - copies * target.num * target.need) @ target.prob
    return result


def cluster_fragmentation(snap: ClusterSnapshot, shapes: Sequence[TargetShape]) -> float:
    """The paper measure summed over all schedulable nodes, in GPU milli."""
    if not shapes or len(snap) == 0:
        return 0.0
    target = TargetArrays(shapes, snap)
    rows = np.flatnonzero(snap.schedulable)
    free = usable_free(snap, rows)
    f = paper_fragment(target, snap.free_cpu[rows], snap.free_mem[rows], target.model_ok[rows],
                       card_terms(free, target), free.sum(axis=1))
    return float(f.sum())
