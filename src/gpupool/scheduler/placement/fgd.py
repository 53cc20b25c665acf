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
up in tables indexed by a card's free milli (fragmentation.py), the same integers as counting them. Both
measures, before and after the placement, come from one evaluation (`fragments`) with the same operations
as each measure alone, so the same floats; for more than a few stale nodes a share is evaluated once per
distinct free milli of a node's fitting cards (equal cards leave the node in equal states).
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
from gpupool.scheduler.placement.filters import FloatArray, by_largest_share, share_terms
from gpupool.scheduler.placement.fragmentation import (
    CardTerms,
    SmallIntArray,
    TargetArrays,
    TargetShape,
    fragments,
    resource_room,
    share_change_table,
    stacked_card_terms,
    target_from_requests,
    usable_free,
)
from gpupool.scheduler.placement.resource_fit import negative_leftover
from gpupool.scheduler.snapshot import BoolArray, ClusterSnapshot, IntArray

# Learning a target from submissions: a window of 2,000 requests holds the mix of the last hours of a busy
# pool (the openb default list has 8,152 pods for two months); relearning every 200 keeps the cost of
# recounting under 1 % of the placements. Neither affects the inflation experiment (its target is given).
LEARN_WINDOW = 2000
LEARN_EVERY = 200
# stale rows up to which a node's card terms are counted afresh rather than kept per node version: a lookup and
# a sum cost about 1 us a row against about 8 us for checking and updating the kept terms (timeit on 1-32 rows
# of the openb cluster: 3-8 us for 1-8 rows counted afresh, 7-13 us kept; 17 us against 8 us for 16 rows)
_COUNT_DIRECTLY = 8
_DEDUPE_ABOVE = 24  # stale rows beyond which identical node states are scored once (speed only: same results)
# distinct node states numbered per kind before the numbering starts again (bounds memory: about 200 bytes each)
_STATE_NUMBERS = 1 << 18
DEFAULT_RESOLUTION = 25.0
# np.add.reduce is what ndarray.sum calls, without the Python wrapper that costs more than these small sums
_ADD = np.add.reduce
_MIN, _MAX = np.minimum.reduce, np.maximum.reduce  # what ndarray.min and max call, likewise
# share sizes whose change tables this policy holds (about 320 KB each for 53 target shapes; the openb traces
# use a few dozen sizes): bounds memory; past it the tables are fetched again from fragmentation.py's cache
_CHANGE_TABLES = 64
# stale rows above which a share is evaluated per distinct free milli of a node's cards rather than on every
# card: timeit of both on a part-full openb cluster (5,000 pods placed, a 0.3-GPU share): 55/63 us for 2 rows,
# 67/67 us for 4, 90/73 us for 8, 182/100 us for 24 (per card / by value)
_BY_VALUE_ABOVE = 4
_VALUE_CODE = MILLI_PER_GPU + 2  # (row, free milli of a card) coded as one integer: row * this + milli
_BIN_SCALE = 1e8  # composite key: growth bin * scale + capacity growth (|capacity growth| <= 8 GPUs' milli << scale)


class _StateNumbers:
    """Per node, a number naming its state as the growths of one kind of request see it, kept per node version
    (a version names one node state, even across clones): nodes with equal numbers have equal growths. The
    state is the free CPU and memory and the node's class, and per `kind`: "whole" (whole GPUs and CPU-only
    work) the cards' usable free milli as a multiset (sorted: the card terms and total are sums over cards);
    "share" the cards in order with their free GPU memory and the node's hardware (card models, memory, which
    take shares), which decide the card a share fits and is placed on; "largest" (a share by milli alone,
    `by_largest_share`) the cards in order with the largest share by milli each takes now (0 for none), which
    decides that card's fit."""

    def __init__(self, nodes: int, kind: str, hardware: IntArray) -> None:
        self.kind, self.hardware = kind, hardware
        self.version = np.full(nodes, -1, dtype=np.int64)
        self.number = np.zeros(nodes, dtype=np.int64)
        self.known: dict[bytes, int] = {}

    def of(self, snap: ClusterSnapshot, target: TargetArrays, rows: IntArray, free: IntArray) -> IntArray:
        """The numbers of `rows` (whose usable free milli per card is `free`), numbering the states of the
        nodes whose version changed since they were last numbered."""
        outdated = (self.version[rows] != snap.version[rows]).nonzero()[0]
        if len(self.known) + outdated.size > _STATE_NUMBERS:  # start again: every node is numbered anew
            self.known.clear()
            self.version[:] = -1
            outdated = np.arange(rows.size)
        if outdated.size:
            changed = rows[outdated]
            parts = [snap.free_cpu[changed], snap.free_mem[changed], target.klass[changed]]
            if self.kind == "whole":
                parts.append(np.sort(free[outdated], axis=1))
            elif self.kind == "largest":
                parts += [free[outdated], np.maximum(snap.share_largest[changed], 0)]  # at most 0: fits no share
            else:
                parts += [self.hardware[changed], free[outdated], snap.free_gmem[changed]]
            known = self.known
            # np.column_stack's result, without its per-part conversions
            state = np.concatenate([p if p.ndim == 2 else p[:, None] for p in parts], axis=1)
            state = state.astype(np.int64, copy=False)
            self.number[changed] = [known.setdefault(row.tobytes(), len(known)) for row in state]
            self.version[changed] = snap.version[changed]
        numbers: IntArray = self.number[rows]
        return numbers


def _distinct(values: IntArray) -> tuple[IntArray, IntArray]:
    """`np.unique(values, return_inverse=True)` of 1-D integers without its wrappers (which cost more than the
    work on a few dozen values): the distinct values in order and, per value, the index of its distinct value."""
    ordered = np.sort(values)
    new = np.empty(ordered.size, dtype=bool)
    new[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    distinct = ordered[new]
    return distinct, distinct.searchsorted(values)


def _first_of_each(values: IntArray) -> tuple[IntArray, IntArray]:
    """`np.unique(values, return_index=True, return_inverse=True)[1:]` of 1-D integers without its wrappers: the
    index of the first occurrence of each distinct value (distinct values in order) and, per value, the index of
    its distinct value."""
    order = values.argsort(kind="stable")
    ordered = values[order]
    new = np.empty(ordered.size, dtype=bool)
    new[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    inverse = np.empty(values.size, dtype=np.intp)
    inverse[order] = new.cumsum() - 1
    first: IntArray = order[new]
    return first, inverse


def _hardware(snap: ClusterSnapshot) -> IntArray:
    """Per node, a number naming its cards' models, memory and which take shares (equal numbers: equal cards)."""
    known: dict[tuple[object, ...], int] = {}
    keys = [(tuple(g.model for g in node.gpus), snap.gpu_mem_total[i].tobytes(), snap.share_ok[i].tobytes(),
             snap.usable_card[i].tobytes()) for i, node in enumerate(snap.nodes)]
    return np.array([known.setdefault(key, len(known)) for key in keys], dtype=np.int64)


@dataclass(frozen=True, slots=True)
class _Taken:
    """What one replica of a request takes from a node, laid out so that one evaluation of the measures gives
    the node after the placement and before it (the last entry of the axis it adds): for whole GPUs and none
    a leading axis of two, for a share one column per card plus one (the before), after the node's axis."""

    cpu: IntArray
    mem: IntArray
    terms: IntArray  # subtracted from the node's stacked terms (whole GPUs and none only)
    total: IntArray


@dataclass
class _ShapeCache:
    request: ReplicaRequest
    taken: _Taken
    version: IntArray
    growth_bin: FloatArray
    capacity: FloatArray
    column: IntArray


@dataclass(frozen=True, slots=True)
class _Growth:
    paper: FloatArray
    capacity: FloatArray
    column: IntArray | None  # a share's card per row (None for whole GPUs and none: never read)


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
        self._terms = np.zeros((0, 3, 0), dtype=np.int64)  # per node: stacked CardTerms at _node_version
        self._change_tables: dict[int, SmallIntArray] = {}
        self._before_column = np.zeros((0, 1), dtype=np.int64)
        self._states: dict[str, _StateNumbers] = {}

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
        cache = self._shape_cache(request, snap, target)
        stale = rows[cache.version[rows] != snap.version[rows]]
        if stale.size:
            free = usable_free(snap, stale)  # computed once for the refresh and the growths
            in_range = snap.usable_out_of_range == 0  # no usable card over-committed (the tables' range)
            growth = self._growths(snap, target, cache, stale, free, in_range)
            # ndarray.round is what np.round calls (without its dispatch wrapper): same values
            cache.growth_bin[stale] = (growth.paper / self.resolution).round()
            cache.capacity[stale] = growth.capacity.round(6)
            if growth.column is not None:
                cache.column[stale] = growth.column
            cache.version[stale] = snap.version[stale]
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
        tied = (growth_bin == _MIN(growth_bin)).nonzero()[0]  # np.minimum.reduce: what ndarray.min calls
        if tied.size == 1 or not self.tie_break:
            return int(tied[0])
        tied_capacity = capacity[tied]
        tied = tied[tied_capacity == _MIN(tied_capacity)]
        if tied.size == 1:
            return int(tied[0])
        return int(tied[negative_leftover(snap, request, rows[tied]).argmax()])

    def _shape_cache(self, request: ReplicaRequest, snap: ClusterSnapshot, target: TargetArrays) -> _ShapeCache:
        cache = self._cache.get(request)
        if cache is None:
            n = len(snap)
            cache = _ShapeCache(request, self._taken_by(request, target, snap.width), np.full(n, -1, np.int64),
                                np.zeros(n), np.zeros(n), np.zeros(n, np.int64))
            self._cache[request] = cache
        return cache

    def _bind(self, snap: ClusterSnapshot) -> TargetArrays:
        if self._target is None or self._snap_nodes is not snap.nodes:
            self._reset()
            self._target = TargetArrays(self._shapes, snap)
            self._snap_nodes = snap.nodes
            n, m = len(snap), len(self._target.cpu)
            self._node_version = np.full(n, -1, dtype=np.int64)
            self._terms = np.zeros((n, 3, m), dtype=np.int64)
            # the share change tables' extra row (all zeros) that a node's before column looks up
            self._before_column = np.full((n, 1), MILLI_PER_GPU + 1, dtype=np.int64)
            hardware = _hardware(snap)
            self._states = {kind: _StateNumbers(n, kind, hardware) for kind in ("whole", "share", "largest")}
        return self._target

    def _terms_of(self, snap: ClusterSnapshot, target: TargetArrays, rows: IntArray, free: IntArray,
                  in_range: bool) -> IntArray:
        """The stacked card terms of `rows` (usable free milli per card `free`): counted afresh for a few rows,
        else kept per node version (`_node_terms`)."""
        if rows.size <= _COUNT_DIRECTLY:
            return stacked_card_terms(free, target, in_range)
        return self._node_terms(snap, target, rows, free, in_range)

    def _node_terms(self, snap: ClusterSnapshot, target: TargetArrays, rows: IntArray, free: IntArray,
                    in_range: bool) -> IntArray:
        """The stacked card terms of `rows` now (whose usable free milli per card is `free`), recounting only
        the nodes whose state changed since they were last counted."""
        outdated = self._node_version[rows] != snap.version[rows]
        stale = rows[outdated]
        if stale.size:
            self._terms[stale] = stacked_card_terms(free[outdated], target, in_range)
            self._node_version[stale] = snap.version[stale]
        terms: IntArray = self._terms[rows]
        return terms

    @staticmethod
    def _taken_by(request: ReplicaRequest, target: TargetArrays, width: int) -> _Taken:
        """_Taken of `request` (kept in its shape cache while the target and snapshot are bound)."""
        gpu = request.gpu
        if gpu.kind == "share":  # one column per card, then the before column (nothing taken)
            cards = np.ones(width + 1, dtype=np.int64)
            cards[width] = 0
            return _Taken(cards * request.cpu_milli, cards * request.memory_mib, np.zeros(0, np.int64),
                          cards * gpu.share_milli)
        # two rows, after and before
        count = gpu.count if gpu.kind == "whole" else 0
        after = np.stack((np.full(len(target.cpu), count), np.zeros(len(target.cpu), np.int64),
                          count * target.whole_slots))
        return _Taken(np.array([[request.cpu_milli], [0]]), np.array([[request.memory_mib], [0]]),
                      np.stack((after, np.zeros_like(after)))[:, None], np.array([[count * MILLI_PER_GPU], [0]]))

    @staticmethod
    @functools.cache
    def _spread(width: int) -> IntArray:
        """Indices that repeat the after column (0) for each of `width` cards, then the before column (1)."""
        spread = np.zeros(width + 1, dtype=np.int64)
        spread[width] = 1
        return spread

    def _share_after(self, target: TargetArrays, terms: IntArray, free: IntArray, milli: IntArray,
                     share_milli: int, in_range: bool) -> IntArray:
        """The stacked terms after a share of `milli` (per card) is placed on each card in turn, and then the
        terms before (rows x cards + 1 x 3 x shapes): `CardTerms.changed`, looked up in a table per share size
        when the size is the same on every card (the same integers)."""
        if not share_milli or not in_range:  # a share sized by memory, or an over-committed card: the formula
            a = free[:, :, None]
            before = CardTerms(terms[:, None, 0], terms[:, None, 1], terms[:, None, 2])
            changed = before.changed(a, a - milli[:, :, None], target.need)
            stacked = np.stack((changed.count, changed.frag, changed.slots), axis=2)
            return np.concatenate((stacked, terms[:, None]), axis=1)
        cards = np.concatenate((free, self._before_column[: len(free)]), axis=1)
        after: IntArray = terms[:, None] + self._change_table(target, share_milli)[cards]
        return after

    def _change_table(self, target: TargetArrays, share_milli: int) -> SmallIntArray:
        """`share_change_table` with one more row, all zeros, that a node's before column looks up."""
        table = self._change_tables.get(share_milli)
        if table is None:
            if len(self._change_tables) >= _CHANGE_TABLES:
                self._change_tables.clear()
            change = share_change_table(target, share_milli)
            table = np.concatenate((change, np.zeros((1, *change.shape[1:]), dtype=change.dtype)))
            self._change_tables[share_milli] = table
        return table

    def _growths(self, snap: ClusterSnapshot, target: TargetArrays, cache: _ShapeCache, rows: IntArray,
                 free: IntArray, in_range: bool) -> _Growth:
        """Growths of `rows` (usable free milli per card `free`); above _DEDUPE_ABOVE rows each distinct node
        state is scored once (its card terms, too, are found only for the first row of each state)."""
        if rows.size > _DEDUPE_ABOVE:
            gpu = cache.request.gpu
            kind = "whole" if gpu.kind != "share" else "largest" if by_largest_share(snap, gpu) else "share"
            numbers = self._states[kind].of(snap, target, rows, free)
            first, inverse = _first_of_each(numbers)
            if first.size < rows.size:
                once, free_once = rows[first], free[first]
                terms = self._terms_of(snap, target, once, free_once, in_range)
                unique = self._growths_exact(snap, target, cache, once, free_once, terms, in_range)
                column = None if unique.column is None else unique.column[inverse]
                return _Growth(unique.paper[inverse], unique.capacity[inverse], column)
        terms = self._terms_of(snap, target, rows, free, in_range)
        return self._growths_exact(snap, target, cache, rows, free, terms, in_range)

    def _growths_exact(self, snap: ClusterSnapshot, target: TargetArrays, cache: _ShapeCache, rows: IntArray,
                       free: IntArray, terms: IntArray, in_range: bool, by_value: bool | None = None) -> _Growth:
        """Growths of both measures on `rows` (usable free milli per card `free`, stacked card terms `terms`):
        the measures after the placement less those before, both from one evaluation. A share is evaluated
        once per distinct free milli of a node's fitting cards when `by_value` (None: above _BY_VALUE_ABOVE
        rows), else on every card."""
        total = _ADD(free, axis=1)
        weight = target.weight[rows]
        cpu, mem = snap.free_cpu[rows], snap.free_mem[rows]
        gpu, taken = cache.request.gpu, cache.taken
        if gpu.kind != "share":
            fits, room = resource_room(target, cpu - taken.cpu, mem - taken.mem)
            paper, capacity = fragments(target, fits, room, weight, terms - taken.terms, total - taken.total)
            return _Growth(paper[0] - paper[1], capacity[0] - capacity[1], None)
        share = share_terms(snap, gpu, rows)
        if by_value is None:
            by_value = rows.size > _BY_VALUE_ABOVE
        if by_value and gpu.share_milli and in_range and share.fits.any(axis=1).all():
            return self._share_growths_by_value(target, cache, share.fits, free, terms, cpu, mem, weight, total)
        after = self._share_after(target, terms, free, share.milli, gpu.share_milli, in_range)
        if gpu.share_milli:
            total_after = total[:, None] - taken.total
        else:  # the share's milli differs by card
            total_after = total[:, None] - np.concatenate((share.milli, np.zeros((len(rows), 1), np.int64)), axis=1)
        # CPU and memory are the same after a share on any card: their part is evaluated once per node, after
        # and before (taken.cpu's last two columns), and spread over the cards
        fits, room = resource_room(target, cpu[:, None] - taken.cpu[-2:], mem[:, None] - taken.mem[-2:])
        spread = self._spread(snap.width)
        both = fragments(target, fits[:, spread], room[:, spread], weight[:, None, :], after, total_after)
        width = snap.width
        paper, capacity = (f[:, :width] - f[:, width:] for f in both)
        tie = capacity if self.tie_break else 0.0
        key = np.where(share.fits, (paper / self.resolution).round() * _BIN_SCALE + tie, np.inf)
        column = key.argmin(axis=1)
        pick = np.arange(len(rows))
        return _Growth(paper[pick, column], capacity[pick, column], column.astype(np.int64))

    def _share_growths_by_value(self, target: TargetArrays, cache: _ShapeCache, fits: BoolArray, free: IntArray,
                                terms: IntArray, cpu: IntArray, mem: IntArray, weight: FloatArray,
                                total: IntArray) -> _Growth:
        """The share growths of `_growths_exact` for rows that each have a card that fits, evaluated once per
        distinct (row, free milli) among the fitting cards (cards with equal free milli leave a node in the
        same state) and once per row before; then each row's card, the first of least key, as there."""
        rows, width = free.shape
        taken = cache.taken
        code = np.where(fits, np.arange(rows)[:, None] * _VALUE_CODE + free, -1).ravel()
        fitting = (code >= 0).nonzero()[0]
        pairs, which = _distinct(code[fitting])
        row, value = np.divmod(pairs, _VALUE_CODE)
        each = np.concatenate((row, np.arange(rows)))  # the node of each evaluated entry: pairs, then before
        after_terms = terms[row] + self._change_table(target, int(taken.total[0]))[value]
        room = resource_room(target, np.concatenate((cpu[row] - taken.cpu[0], cpu)),
                             np.concatenate((mem[row] - taken.mem[0], mem)))
        paper, capacity = fragments(target, *room, weight[each], np.concatenate((after_terms, terms)),
                                    np.concatenate((total[row] - taken.total[0], total)))
        count = len(pairs)
        paper, capacity = paper[:count] - paper[count:][row], capacity[:count] - capacity[count:][row]
        tie = capacity if self.tie_break else 0.0
        key = np.full(rows * width, np.inf)
        key[fitting] = ((paper / self.resolution).round() * _BIN_SCALE + tie)[which]
        column = key.reshape(rows, width).argmin(axis=1)
        pair = np.zeros(rows * width, dtype=np.int64)
        pair[fitting] = which
        chosen = pair.reshape(rows, width)[np.arange(rows), column]
        return _Growth(paper[chosen], capacity[chosen], column.astype(np.int64))
