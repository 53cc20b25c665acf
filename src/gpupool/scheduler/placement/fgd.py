"""Fragmentation gradient descent (FGD): place where expected GPU fragmentation grows least.

Definitions follow Weng et al., "Beware of Fragmentation: Scheduling GPU-Sharing Workloads with
Fragmentation Gradient Descent", USENIX ATC 2023. A *target workload* is a set of request shapes m with
probabilities p_m. For a node n and a shape m:

- if m cannot run on n at all (too little free CPU or memory, no allowed GPU model, fewer than m's GPU
  count of cards with at least m's per-card milli free, or m asks for no GPU), every idle GPU milli on n
  is fragment;
- otherwise the idle milli on the cards whose free milli is below m's per-card need is fragment.

F(n) = sum_m p_m F(n, m). FGD places a replica on the node, and for a share on the card, whose
placement increases F(n) least. Per-node terms are cached by node version, and the increase for each
request shape is cached per node, so a placement recomputes only the nodes that changed since that
shape was last scored.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from gpupool.domain.resources import MILLI_PER_GPU, ReplicaRequest, model_matches
from gpupool.scheduler.placement.base import PlacementPolicy, Scored
from gpupool.scheduler.placement.filters import FloatArray, share_terms
from gpupool.scheduler.placement.resource_fit import negative_leftover
from gpupool.scheduler.snapshot import BoolArray, ClusterSnapshot, IntArray

DEFAULT_COVERAGE = 0.95
LEARN_WINDOW = 2000
LEARN_EVERY = 200
_DEDUPE_ABOVE = 24  # stale rows beyond which identical node states are scored once


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
    """The target-workload shape of a request (None for MIG and memory-only shares, which FGD ignores)."""
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


class _Target:
    """The target workload as arrays, with the per-node model compatibility of one cluster."""

    def __init__(self, shapes: Sequence[TargetShape], snap: ClusterSnapshot) -> None:
        self.cpu = np.array([s.cpu_milli for s in shapes], dtype=np.int64)
        self.mem = np.array([s.memory_mib for s in shapes], dtype=np.int64)
        self.num = np.array([s.num_gpu for s in shapes], dtype=np.int64)
        self.need = np.array([s.gpu_milli for s in shapes], dtype=np.int64)
        self.prob = np.array([s.probability for s in shapes], dtype=np.float64)
        self.model_ok = np.zeros((len(snap), len(shapes)), dtype=np.bool_)
        for i, node in enumerate(snap.nodes):
            models = {g.model for g in node.gpus}
            for k, shape in enumerate(shapes):
                self.model_ok[i, k] = shape.num_gpu > 0 and bool(models) and (
                    not shape.models or any(model_matches(m, g) for m in shape.models for g in models))


def usable_free(snap: ClusterSnapshot, rows: IntArray | slice) -> IntArray:
    """Free milli of the cards that take whole GPUs or shares (MIG and unhealthy cards count 0)."""
    result: IntArray = np.where(snap.whole_ok[rows] | snap.share_ok[rows], snap.free_milli[rows], 0)
    return result


def card_terms(free: IntArray, need: IntArray) -> tuple[IntArray, IntArray]:
    """Per node and shape: cards with at least the shape's per-card need free, and the milli on the others."""
    enough = free[:, None, :] >= need[None, :, None]
    count = enough.sum(axis=2)
    frag = np.where(enough, 0, free[:, None, :]).sum(axis=2)
    return count.astype(np.int64), frag.astype(np.int64)


def expected_fragment(
    target: _Target, cpu: IntArray, mem: IntArray, model_ok: BoolArray, count: IntArray, frag: IntArray,
    total: IntArray,
) -> FloatArray:
    """F = sum_m p_m F(n, m) for arrays whose last axis is the shape axis (any leading shape)."""
    runs = ((cpu[..., None] >= target.cpu) & (mem[..., None] >= target.mem) & model_ok
            & (count >= target.num))
    result: FloatArray = np.where(runs, frag, total[..., None]) @ target.prob
    return result


def cluster_fragmentation(snap: ClusterSnapshot, shapes: Sequence[TargetShape]) -> float:
    """Total expected fragment F over all schedulable nodes, in GPU milli."""
    if not shapes or len(snap) == 0:
        return 0.0
    target = _Target(shapes, snap)
    rows = np.flatnonzero(snap.schedulable)
    free = usable_free(snap, rows)
    count, frag = card_terms(free, target.need)
    f = expected_fragment(target, snap.free_cpu[rows], snap.free_mem[rows], target.model_ok[rows], count, frag,
                          free.sum(axis=1))
    return float(f.sum())


@dataclass
class _ShapeCache:
    version: IntArray
    delta: FloatArray
    column: IntArray


class FgdPolicy(PlacementPolicy):
    """Fragmentation gradient descent. Give `target` shapes, or leave it None to learn the mix from the
    last requests passed to `observe` (until it has seen any, it scores like bestfit)."""

    name = "fgd"
    learns_target = True

    def __init__(self, target: Sequence[TargetShape] | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._shapes = list(target) if target is not None else []
        self._learning = target is None
        self._recent: deque[ReplicaRequest] = deque(maxlen=LEARN_WINDOW)
        self._seen = 0
        self._reset()

    def _reset(self) -> None:
        self._target: _Target | None = None
        self._snap_nodes: tuple[object, ...] = ()
        self._cache: dict[ReplicaRequest, _ShapeCache] = {}
        self._node_version = np.zeros(0, dtype=np.int64)
        self._node_f = np.zeros(0)
        self._count = np.zeros((0, 0), dtype=np.int64)
        self._frag = np.zeros((0, 0), dtype=np.int64)

    @property
    def shapes(self) -> list[TargetShape]:
        """The current target workload."""
        return list(self._shapes)

    def observe(self, request: ReplicaRequest) -> None:
        if not self._learning:
            return
        self._recent.append(request)
        self._seen += 1
        if self._seen % LEARN_EVERY == 1 or not self._shapes:
            self._shapes = target_from_requests(self._recent)
            self._reset()

    def _bind(self, snap: ClusterSnapshot) -> _Target:
        if self._target is None or self._snap_nodes is not snap.nodes:
            self._reset()
            self._target = _Target(self._shapes, snap)
            self._snap_nodes = snap.nodes
            n, m = len(snap), len(self._shapes)
            self._node_version = np.full(n, -1, dtype=np.int64)
            self._node_f, self._count, self._frag = np.zeros(n), np.zeros((n, m), np.int64), np.zeros((n, m), np.int64)
        return self._target

    def _refresh_nodes(self, snap: ClusterSnapshot, target: _Target, rows: IntArray) -> None:
        stale = rows[self._node_version[rows] != snap.version[rows]]
        if stale.size == 0:
            return
        free = usable_free(snap, stale)
        count, frag = card_terms(free, target.need)
        self._count[stale], self._frag[stale] = count, frag
        self._node_f[stale] = expected_fragment(target, snap.free_cpu[stale], snap.free_mem[stale],
                                                target.model_ok[stale], count, frag, free.sum(axis=1))
        self._node_version[stale] = snap.version[stale]

    def score(self, snap: ClusterSnapshot, request: ReplicaRequest, rows: IntArray) -> Scored:
        if not self._shapes:
            return Scored(negative_leftover(snap, request, rows))
        target = self._bind(snap)
        cache = self._cache.get(request)
        if cache is None:
            n = len(snap)
            cache = _ShapeCache(np.full(n, -1, np.int64), np.zeros(n), np.zeros(n, np.int64))
            self._cache[request] = cache
        stale = rows[cache.version[rows] != snap.version[rows]]
        if stale.size:
            self._refresh_nodes(snap, target, stale)
            delta, column = self._deltas(snap, target, request, stale)
            cache.delta[stale], cache.column[stale], cache.version[stale] = delta, column, snap.version[stale]
        return Scored(-cache.delta[rows], cache.column[rows] if request.gpu.kind == "share" else None)

    def _deltas(self, snap: ClusterSnapshot, target: _Target, request: ReplicaRequest,
                rows: IntArray) -> tuple[FloatArray, IntArray]:
        if rows.size > _DEDUPE_ABOVE:
            state = np.column_stack([snap.free_cpu[rows], snap.free_mem[rows], usable_free(snap, rows),
                                     target.model_ok[rows], snap.free_gmem[rows]])
            _, first, inverse = np.unique(state, axis=0, return_index=True, return_inverse=True)
            delta, column = self._deltas_exact(snap, target, request, rows[first])
            return delta[inverse.ravel()], column[inverse.ravel()]
        return self._deltas_exact(snap, target, request, rows)

    def _deltas_exact(self, snap: ClusterSnapshot, target: _Target, request: ReplicaRequest,
                      rows: IntArray) -> tuple[FloatArray, IntArray]:
        cpu = snap.free_cpu[rows] - request.cpu_milli
        mem = snap.free_mem[rows] - request.memory_mib
        free = usable_free(snap, rows)
        total, count, frag = free.sum(axis=1), self._count[rows], self._frag[rows]
        model_ok, before = target.model_ok[rows], self._node_f[rows]
        gpu = request.gpu
        if gpu.kind != "share":
            taken = gpu.count if gpu.kind == "whole" else 0
            after = expected_fragment(target, cpu, mem, model_ok, count - taken, frag,
                                      total - taken * MILLI_PER_GPU)
            return after - before, np.zeros(len(rows), np.int64)
        terms = share_terms(snap, gpu, rows)
        a = free[:, :, None]
        b = a - terms.milli[:, :, None]
        need = target.need[None, None, :]
        count_after = count[:, None, :] - (a >= need) + (b >= need)
        frag_after = frag[:, None, :] - np.where(a < need, a, 0) + np.where(b < need, b, 0)
        after = expected_fragment(target, cpu[:, None], mem[:, None], model_ok[:, None, :], count_after,
                                  frag_after, total[:, None] - terms.milli)
        after = np.where(terms.fits, after, np.inf)
        column = np.argmin(after, axis=1)
        best = after[np.arange(len(rows)), column]
        return best - before, column.astype(np.int64)
