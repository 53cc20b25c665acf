"""Fragmentation gradient descent (FGD): place where expected GPU fragmentation grows least.

After Weng et al., "Beware of Fragmentation: Scheduling GPU-Sharing Workloads with Fragmentation Gradient
Descent", USENIX ATC 2023; the measures are defined in fragmentation.py. For a replica, every candidate
node (and for a share every card on it) is scored by dF, the growth of the paper's measure that its
placement would cause. Growths are compared at a resolution of `resolution` milli-GPU (default 25: the
paper's own scorer maps dF to an integer 0-100 through sigmoid(-dF / 1000), which near zero distinguishes
steps of about 40 milli; 25 was chosen from 20/25/30/40/60 with runs on five published openb traces and
then checked, unchanged, on generated variants it was not chosen on: benchmarks/openb/README.md); equal
growths are ordered by the growth of the capacity measure (which also sees GPUs stranded by CPU or
memory), then by the least leftover (bestfit), then by node order. `fgd-plain` compares exact growths and
breaks ties by node order only, for comparison. Both measures count a shape on a node only for the part
of its requests that accept the node's GPU models (fragmentation.py).

Per-node terms are cached by node version and each request shape's growths are cached per node, so a
placement recomputes only the nodes that changed since that shape was last scored; many stale nodes in
identical states are scored once. A node's card terms, and a share's change to them on each card, are looked
up in tables indexed by a card's free milli (fragmentation.py), the same integers as counting them.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gpupool.domain.resources import MILLI_PER_GPU, ReplicaRequest
from gpupool.scheduler.placement.base import PlacementPolicy, Scored
from gpupool.scheduler.placement.filters import FloatArray, share_terms
from gpupool.scheduler.placement.fragmentation import (
    CardTerms,
    SmallIntArray,
    TargetArrays,
    TargetShape,
    capacity_fragment,
    card_terms,
    paper_fragment,
    share_change_table,
    target_from_requests,
    usable_free,
)
from gpupool.scheduler.placement.resource_fit import negative_leftover
from gpupool.scheduler.snapshot import ClusterSnapshot, IntArray

# Learning a target from submissions: a window of 2,000 requests holds the mix of the last hours of a busy
# pool (the openb default list has 8,152 pods for two months); relearning every 200 keeps the cost of
# recounting under 1 % of the placements. Neither affects the inflation experiment (its target is given).
LEARN_WINDOW = 2000
LEARN_EVERY = 200
_DEDUPE_ABOVE = 24  # stale rows beyond which identical node states are scored once (speed only: same results)
DEFAULT_RESOLUTION = 25.0
# np.add.reduce is what ndarray.sum calls, without the Python wrapper that costs more than these small sums
_ADD = np.add.reduce
_MIN, _MAX = np.minimum.reduce, np.maximum.reduce  # what ndarray.min and max call, likewise
# share sizes whose change tables this policy holds (about 320 KB each for 53 target shapes; the openb traces
# use a few dozen sizes): bounds memory; past it the tables are fetched again from fragmentation.py's cache
_CHANGE_TABLES = 64
_BIN_SCALE = 1e8  # composite key: growth bin * scale + capacity growth (|capacity growth| <= 8 GPUs' milli << scale)


@functools.cache
def _hash_weights(width: int) -> IntArray:
    weights: IntArray = np.random.default_rng(20231121).integers(1, 2**62, size=width, dtype=np.int64)
    return weights


@dataclass
class _ShapeCache:
    version: IntArray
    growth_bin: FloatArray
    capacity: FloatArray
    column: IntArray


@dataclass(frozen=True, slots=True)
class _Growth:
    paper: FloatArray
    capacity: FloatArray
    column: IntArray


class FgdPolicy(PlacementPolicy):
    """Fragmentation gradient descent (see the module docstring). Give `target` shapes, or leave it None
    to learn the mix from the last requests passed to `observe` (until it has seen any, it scores like
    bestfit). `resolution` is in milli-GPU; `tie_break` False orders equal growths by node order only."""

    name = "fgd"
    learns_target = True

    def __init__(self, target: Sequence[TargetShape] | None = None, resolution: float = DEFAULT_RESOLUTION,
                 tie_break: bool = True, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        if resolution <= 0:
            raise ValueError("resolution must be above 0")
        self.resolution, self.tie_break = resolution, tie_break
        self._shapes = list(target) if target is not None else []
        self._learning = target is None
        self._recent: deque[ReplicaRequest] = deque(maxlen=LEARN_WINDOW)
        self._seen = 0
        self._reset()

    def _reset(self) -> None:
        self._target: TargetArrays | None = None
        self._snap_nodes: tuple[object, ...] = ()
        self._cache: dict[ReplicaRequest, _ShapeCache] = {}
        self._node_version = np.zeros(0, dtype=np.int64)
        self._terms = CardTerms(*(np.zeros((0, 0), dtype=np.int64) for _ in range(3)))
        self._paper = np.zeros(0)
        self._capacity = np.zeros(0)
        self._change_tables: dict[int, SmallIntArray] = {}

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

    def score(self, snap: ClusterSnapshot, request: ReplicaRequest, rows: IntArray) -> Scored:
        if not self._shapes:
            return Scored(negative_leftover(snap, request, rows))
        target = self._bind(snap)
        cache = self._shape_cache(request, len(snap))
        stale = rows[cache.version[rows] != snap.version[rows]]
        if stale.size:
            free = usable_free(snap, stale)  # computed once for the refresh and the growths
            self._refresh_nodes(snap, target, stale, free)
            growth = self._growths(snap, target, request, stale, free)
            # ndarray.round is what np.round calls (without its dispatch wrapper): same values
            cache.growth_bin[stale] = (growth.paper / self.resolution).round()
            cache.capacity[stale] = growth.capacity.round(6)
            cache.column[stale], cache.version[stale] = growth.column, snap.version[stale]
        growth_bin, capacity = cache.growth_bin[rows], cache.capacity[rows]
        columns = cache.column[rows] if request.gpu.kind == "share" else None

        def ranking() -> FloatArray:
            keys: tuple[npt.NDArray[np.generic], ...] = (-np.arange(len(rows)), -growth_bin)
            if self.tie_break:
                keys = (-np.arange(len(rows)), negative_leftover(snap, request, rows), -capacity, -growth_bin)
            ranks = np.empty(len(rows))
            ranks[np.lexsort(keys)] = np.arange(len(rows))
            return ranks

        return Scored(share_columns=columns, best=self._best(snap, request, rows, growth_bin, capacity),
                      ranking=ranking)

    def _best(self, snap: ClusterSnapshot, request: ReplicaRequest, rows: IntArray, growth_bin: FloatArray,
              capacity: FloatArray) -> int:
        """The top row by (least growth bin, least capacity growth, bestfit, first) without a full sort."""
        tied = (growth_bin == growth_bin.min()).nonzero()[0]
        if tied.size == 1 or not self.tie_break:
            return int(tied[0])
        tied = tied[capacity[tied] == capacity[tied].min()]
        if tied.size == 1:
            return int(tied[0])
        return int(tied[np.argmax(negative_leftover(snap, request, rows[tied]))])

    def _shape_cache(self, request: ReplicaRequest, n: int) -> _ShapeCache:
        cache = self._cache.get(request)
        if cache is None:
            cache = _ShapeCache(np.full(n, -1, np.int64), np.zeros(n), np.zeros(n), np.zeros(n, np.int64))
            self._cache[request] = cache
        return cache

    def _bind(self, snap: ClusterSnapshot) -> TargetArrays:
        if self._target is None or self._snap_nodes is not snap.nodes:
            self._reset()
            self._target = TargetArrays(self._shapes, snap)
            self._snap_nodes = snap.nodes
            n, m = len(snap), len(self._target.cpu)
            self._node_version = np.full(n, -1, dtype=np.int64)
            self._terms = CardTerms(*(np.zeros((n, m), dtype=np.int64) for _ in range(3)))
            self._paper, self._capacity = np.zeros(n), np.zeros(n)
        return self._target

    def _refresh_nodes(self, snap: ClusterSnapshot, target: TargetArrays, rows: IntArray,
                       rows_free: IntArray) -> None:
        outdated = self._node_version[rows] != snap.version[rows]
        stale = rows[outdated]
        if stale.size == 0:
            return
        free = rows_free[outdated]
        terms = card_terms(free, target)
        self._terms.count[stale], self._terms.frag[stale], self._terms.slots[stale] = (
            terms.count, terms.frag, terms.slots)
        args = (target, snap.free_cpu[stale], snap.free_mem[stale], target.weight[stale], terms, _ADD(free, axis=1))
        self._paper[stale], self._capacity[stale] = paper_fragment(*args), capacity_fragment(*args)
        self._node_version[stale] = snap.version[stale]

    def _share_taken(self, target: TargetArrays, terms: CardTerms, free: IntArray, milli: IntArray,
                     share_milli: int) -> CardTerms:
        """The terms after a share of `milli` (per card) is placed on each card in turn: `CardTerms.changed`,
        looked up in a table per share size when the size is the same on every card (the same integers)."""
        # a share sized by memory (its milli differs by card), or an over-committed card: the formula
        if not share_milli or _MIN(free, axis=None) < 0 or _MAX(free, axis=None) > MILLI_PER_GPU:
            a = free[:, :, None]
            expanded = CardTerms(terms.count[:, None, :], terms.frag[:, None, :], terms.slots[:, None, :])
            return expanded.changed(a, a - milli[:, :, None], target.need)
        table = self._change_tables.get(share_milli)
        if table is None:
            if len(self._change_tables) >= _CHANGE_TABLES:
                self._change_tables.clear()
            table = self._change_tables[share_milli] = share_change_table(target, share_milli)
        change = table[free]  # (rows, cards, 3, shapes)
        return CardTerms(terms.count[:, None, :] + change[:, :, 0], terms.frag[:, None, :] + change[:, :, 1],
                         terms.slots[:, None, :] + change[:, :, 2])

    def _growths(self, snap: ClusterSnapshot, target: TargetArrays, request: ReplicaRequest,
                 rows: IntArray, free: IntArray) -> _Growth:
        if rows.size <= _DEDUPE_ABOVE:
            return self._growths_exact(snap, target, request, rows, free)
        state = np.column_stack([snap.free_cpu[rows], snap.free_mem[rows], free,
                                 target.klass[rows], snap.free_gmem[rows]]).astype(np.int64)
        hashes = state @ _hash_weights(state.shape[1])  # wraps on overflow: a hash, checked below
        _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        back = inverse.ravel()
        unique = self._growths_exact(snap, target, request, rows[first], free[first])
        growth = _Growth(unique.paper[back], unique.capacity[back], unique.column[back])
        collided = np.flatnonzero((state != state[first][back]).any(axis=1))
        if collided.size:  # two different states with one hash: score those rows on their own
            exact = self._growths_exact(snap, target, request, rows[collided], free[collided])
            growth.paper[collided], growth.capacity[collided] = exact.paper, exact.capacity
            growth.column[collided] = exact.column
        return growth

    def _growths_exact(self, snap: ClusterSnapshot, target: TargetArrays, request: ReplicaRequest,
                       rows: IntArray, free: IntArray) -> _Growth:
        """Growths of both measures on `rows` (whose usable free milli per card is `free`)."""
        cpu = snap.free_cpu[rows] - request.cpu_milli
        mem = snap.free_mem[rows] - request.memory_mib
        total = _ADD(free, axis=1)
        terms = CardTerms(self._terms.count[rows], self._terms.frag[rows], self._terms.slots[rows])
        weight = target.weight[rows]
        before_paper, before_capacity = self._paper[rows], self._capacity[rows]
        gpu = request.gpu
        if gpu.kind != "share":
            taken = gpu.count if gpu.kind == "whole" else 0
            after = terms.whole_taken(taken, target)
            args = (target, cpu, mem, weight, after, total - taken * MILLI_PER_GPU)
            return _Growth(paper_fragment(*args) - before_paper, capacity_fragment(*args) - before_capacity,
                           np.zeros(len(rows), np.int64))
        share = share_terms(snap, gpu, rows)
        after = self._share_taken(target, terms, free, share.milli, gpu.share_milli)
        args = (target, cpu[:, None], mem[:, None], weight[:, None, :], after, total[:, None] - share.milli)
        paper = paper_fragment(*args) - before_paper[:, None]
        capacity = capacity_fragment(*args) - before_capacity[:, None]
        tie = capacity if self.tie_break else 0.0
        key = np.where(share.fits, (paper / self.resolution).round() * _BIN_SCALE + tie, np.inf)
        column = key.argmin(axis=1)
        pick = np.arange(len(rows))
        return _Growth(paper[pick, column], capacity[pick, column], column.astype(np.int64))
