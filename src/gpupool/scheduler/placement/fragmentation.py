"""GPU fragmentation measures against a target workload.

The target workload is a set of request shapes m (CPU c_m, memory r_m, GPU count n_m, milli per GPU u_m,
allowed models) with probabilities p_m. For one node with free CPU C, free memory R, and free milli f_g
on each usable card g (total T = sum f_g):

**Paper measure** (Weng et al., "Beware of Fragmentation", USENIX ATC 2023, and the trace's SOURCE.md):
shape m *runs* on the node when C >= c_m, R >= r_m, a card model is allowed and at least n_m cards have
f_g >= u_m. F(n, m) = sum of f_g over the cards with f_g < u_m when m runs, else T (every idle milli);
CPU-only shapes count T. F(n) = sum_m p_m F(n, m).

**Model constraints.** Requests of one shape may name different GPU models (a trace's `gpu_spec`). The
target keeps, per shape, every model list its requests named with its probability, and evaluates each
shape once per node: the part w_nm of p_m whose model lists accept node n's models runs (or not) as
above; the rest, p_m - w_nm, cannot run there and counts T. So a node only protects room for the requests
that may use it, and coverage (which shapes are typical) is decided per shape, not per model list, so
that a shape named with many model lists is not dropped as a tail of rare pairs.

**Capacity measure** (ours): how much of T the shape could actually use if the node were filled with
copies of it. k_m = min(floor(sum_g floor(f_g / u_m) / n_m), floor(C / c_m), floor(R / r_m)) copies fit,
using k_m n_m u_m milli; F_cap(n) = sum_m (p_m T - w_nm k_m n_m u_m) (k_m counts only for the requests
that accept the node's models; CPU-only shapes count T).
It also sees GPUs stranded by CPU or memory that the node can no longer feed, which the paper measure
only notices once a shape cannot run at all.

Both measures only need three per-node, per-shape counts (`CardTerms`), which change by a closed form
when one card's free milli changes from a to b — the basis of the cheap incremental scoring in fgd.py.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from gpupool.domain.resources import MILLI_PER_GPU, ReplicaRequest, model_matches
from gpupool.scheduler.placement.filters import FloatArray
from gpupool.scheduler.snapshot import BoolArray, ClusterSnapshot, IntArray

DEFAULT_COVERAGE = 0.95  # the paper's: typical shapes are the most frequent ones covering 95 % of requests
_NO_LIMIT = np.int64(1) << 40
SmallIntArray = npt.NDArray[np.int16]
# np.add.reduce is what ndarray.sum calls, without the Python wrapper that costs more than these small sums
_ADD = np.add.reduce
_MIN, _MAX = np.minimum.reduce, np.maximum.reduce  # what ndarray.min and max call, likewise


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
    """The target workload of `requests`: the most frequent shapes (CPU, memory, GPU count, milli per GPU)
    that together cover `coverage` of them, each split into the model lists its requests named, with
    probabilities renormalised over the covered requests. Coverage is counted per shape, not per (shape,
    models): a shape whose requests name many different model lists stays in the target with all of them,
    so the model constraints of the workload are represented as a whole. Ties in frequency are broken by
    the shape itself, so the result is deterministic."""
    by_shape: dict[TargetShape, Counter[tuple[str, ...]]] = {}
    for s in map(shape_of, requests):
        if s is not None:
            by_shape.setdefault(replace(s, models=()), Counter())[s.models] += 1
    total = sum(sum(c.values()) for c in by_shape.values())
    if not total:
        return []
    ranked = sorted(by_shape.items(), key=lambda kv: (-sum(kv[1].values()), _shape_key(kv[0])))
    chosen, covered = [], 0
    for shape, models in ranked:
        chosen.append((shape, models))
        covered += sum(models.values())
        if covered >= coverage * total:
            break
    return [replace(shape, models=m, probability=c / covered)
            for shape, models in chosen for m, c in sorted(models.items(), key=lambda mc: (-mc[1], mc[0]))]


def _shape_key(s: TargetShape) -> tuple[int, int, int, int, tuple[str, ...]]:
    return (s.cpu_milli, s.memory_mib, s.num_gpu, s.gpu_milli, s.models)


class TargetArrays:
    """The target workload as arrays, one entry per shape (CPU, memory, GPU count, milli per GPU; target
    shapes that differ only in their models are one entry), and per node and shape the probability of a
    request of that shape that accepts the node's GPU models (`weight`; 0 for CPU-only shapes and nodes
    without GPUs). `klass` numbers the distinct rows of `weight`: nodes of one class accept the same
    requests."""

    def __init__(self, shapes: Sequence[TargetShape], snap: ClusterSnapshot) -> None:
        index: dict[tuple[int, int, int, int], int] = {}
        for s in shapes:
            index.setdefault((s.cpu_milli, s.memory_mib, s.num_gpu, s.gpu_milli), len(index))
        bases = list(index)
        self.cpu = np.array([b[0] for b in bases], dtype=np.int64)
        self.mem = np.array([b[1] for b in bases], dtype=np.int64)
        self.num = np.array([b[2] for b in bases], dtype=np.int64)
        self.need = np.array([max(b[3], 1) for b in bases], dtype=np.int64)
        self.prob = np.zeros(len(bases), dtype=np.float64)
        for s in shapes:
            self.prob[index[(s.cpu_milli, s.memory_mib, s.num_gpu, s.gpu_milli)]] += s.probability
        self.total_prob = float(self.prob.sum())
        self.whole_slots = MILLI_PER_GPU // self.need  # slots one fully free card holds per shape
        # float divisors for the copy counts (float division of integers below 2**53 floors exactly, and is
        # several times faster than numpy's integer floor division); None when a shape asks 0 CPU or memory
        self.divisors = (self.cpu.astype(np.float64), self.mem.astype(np.float64),
                         np.maximum(self.num, 1).astype(np.float64)) if (self.cpu > 0).all() and (self.mem > 0).all() \
            else None
        self.gpu_per_copy = (self.num * self.need).astype(np.float64)
        self.need_key = tuple(self.need.tolist())
        self.card_table = _card_table(self.need_key)
        by_models: dict[frozenset[str], FloatArray] = {}
        self.weight = np.zeros((len(snap), len(bases)), dtype=np.float64)
        for i, node in enumerate(snap.nodes):
            models = frozenset(g.model for g in node.gpus)
            row = by_models.get(models)
            if row is None:
                row = np.zeros(len(bases), dtype=np.float64)
                for s in shapes:
                    if s.num_gpu > 0 and models and (
                            not s.models or any(model_matches(m, g) for m in s.models for g in models)):
                        row[index[(s.cpu_milli, s.memory_mib, s.num_gpu, s.gpu_milli)]] += s.probability
                by_models[models] = row
            self.weight[i] = row
        _, klass = np.unique(self.weight, axis=0, return_inverse=True) if len(snap) else (None, np.zeros(0))
        self.klass: IntArray = np.asarray(klass, dtype=np.int64).ravel()


@functools.lru_cache(maxsize=8)  # one per target workload in use; a scheduler has one at a time
def _card_table(need: tuple[int, ...]) -> SmallIntArray:
    """Per card value a = 0..1000 free milli: one card's part of CardTerms' count, frag and slots per shape
    (int16: each is within 0..1000), so that a node's terms are a lookup and a sum over its cards. Read-only."""
    needs = np.array(need, dtype=np.int64)
    cards = np.arange(MILLI_PER_GPU + 1, dtype=np.int64)[:, None]
    enough = cards >= needs
    table: SmallIntArray = np.stack((enough, np.where(enough, 0, cards), cards // needs), axis=1).astype(np.int16)
    table.setflags(write=False)
    return table


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


def share_change_table(target: TargetArrays, milli: int) -> SmallIntArray:
    """Per card value a in 0..1000 free milli (first axis): how CardTerms' count, frag and slots (second axis)
    change per shape (last axis) when a share of `milli` takes a card from a to a - milli; what
    `CardTerms.changed` gives, as small integers (int16: every change is within +-2000). Read-only."""
    return _share_change_table(target.need_key, milli)


@functools.lru_cache(maxsize=64)  # share sizes in use (about 320 KB each for 53 shapes; openb uses a few dozen)
def _share_change_table(need: tuple[int, ...], milli: int) -> SmallIntArray:
    """From the per-card table: the card's terms at a - milli less those at a; where a - milli < 0 (the share
    does not fit, kept for completeness) frag takes the negative a - milli and count and slots nothing."""
    table = _card_table(need).astype(np.int64)
    after = np.arange(MILLI_PER_GPU + 1, dtype=np.int64) - milli
    change = -table
    fits = after >= 0
    change[fits] += table[after[fits]]
    change[~fits, 1] += after[~fits, None]
    result: SmallIntArray = change.astype(np.int16)
    result.setflags(write=False)
    return result


def usable_free(snap: ClusterSnapshot, rows: IntArray | slice) -> IntArray:
    """Free milli of the cards that take whole GPUs or shares (MIG and unhealthy cards count 0): the snapshot's
    `usable_free_milli`, kept per card on assume and forget (a copy)."""
    result: IntArray = snap.usable_free_milli[rows]
    return result if isinstance(rows, np.ndarray) else result.copy()


def card_terms(free: IntArray, target: TargetArrays) -> CardTerms:
    """CardTerms of nodes whose cards have `free` milli (rows x cards)."""
    stacked = stacked_card_terms(free, target)
    return CardTerms(stacked[:, 0], stacked[:, 1], stacked[:, 2])


def stacked_card_terms(free: IntArray, target: TargetArrays, in_range: bool | None = None) -> IntArray:
    """card_terms as one array (rows x 3 x shapes: count, frag, slots). `in_range` says whether every value of
    `free` is within 0..1000 (None: checked here)."""
    if in_range is None:
        in_range = bool(free.size) and _MIN(free, axis=None) >= 0 and _MAX(free, axis=None) <= MILLI_PER_GPU
    if in_range and free.size:
        # each card's terms looked up by its free milli and summed over the cards: the same integers
        summed: IntArray = _ADD(target.card_table[free], axis=1, dtype=np.int64)
        return summed
    counted = _card_terms_counted(free, target)
    return np.stack((counted.count, counted.frag, counted.slots), axis=1)


def _card_terms_counted(free: IntArray, target: TargetArrays) -> CardTerms:
    """card_terms counted from the free milli (any value, also an over-committed card's negative one)."""
    need = target.need[None, :, None]
    cards = free[:, None, :]
    enough = cards >= need
    return CardTerms(
        _ADD(enough, axis=2).astype(np.int64),
        _ADD(np.where(enough, 0, cards), axis=2).astype(np.int64),
        _ADD(cards // need, axis=2).astype(np.int64),
    )


def paper_fragment(target: TargetArrays, cpu: IntArray, mem: IntArray, weight: FloatArray, terms: CardTerms,
                   total: IntArray) -> FloatArray:
    """The paper measure F(n) = sum_m p_m F(n, m) (any leading axes; shapes on the last). `weight` is
    the nodes' rows of `TargetArrays.weight`: the part of each shape whose requests accept the node's
    models; the rest of the shape cannot run there and counts T."""
    runs = (cpu[..., None] >= target.cpu) & (mem[..., None] >= target.mem) & (terms.count >= target.num)
    saved = np.where(runs, total[..., None] - terms.frag, 0) * weight
    result: FloatArray = total * target.total_prob - _ADD(saved, axis=-1)
    return result


def capacity_fragment(target: TargetArrays, cpu: IntArray, mem: IntArray, weight: FloatArray, terms: CardTerms,
                      total: IntArray) -> FloatArray:
    """The capacity measure F_cap(n) = sum_m p_m (T - k_m n_m u_m) (see the module docstring), with k_m
    counted only for the part of shape m whose requests accept the node's models (`weight`)."""
    used = np.maximum(_copies(target, cpu[..., None], mem[..., None], terms.slots), 0) * target.gpu_per_copy * weight
    result: FloatArray = total * target.total_prob - _ADD(used, axis=-1)
    return result


def _copies(target: TargetArrays, cpu: IntArray, mem: IntArray, slots: IntArray) -> FloatArray | IntArray:
    """k_m per shape (last axis) for free `cpu` and `mem` (shapes axis already added) and card `slots`."""
    if target.divisors is not None:
        by_cpu, by_mem, by_num = target.divisors
        copies: FloatArray = np.floor(np.minimum(np.minimum(cpu / by_cpu, mem / by_mem), slots / by_num))
        return copies
    by_cpu = np.where(target.cpu > 0, cpu // np.maximum(target.cpu, 1), _NO_LIMIT)
    by_mem = np.where(target.mem > 0, mem // np.maximum(target.mem, 1), _NO_LIMIT)
    counted: IntArray = np.minimum(np.minimum(by_cpu, by_mem), slots // np.maximum(target.num, 1))
    return counted


def resource_room(target: TargetArrays, cpu: IntArray, mem: IntArray) -> tuple[BoolArray, FloatArray | IntArray]:
    """Per shape (a last axis added to `cpu` and `mem`): whether the free CPU and memory take one copy, and how
    many copies they take (with float divisors: before the floor; `fragments` takes the floor with the slots).
    With float divisors the first is `room >= 1`, which for integers below 2**52 is exactly `cpu >= c_m and
    mem >= r_m`: a quotient of integers below 1 stays below 1 after rounding."""
    cpu, mem = cpu[..., None], mem[..., None]
    if target.divisors is not None:
        by_cpu, by_mem, _ = target.divisors
        room: FloatArray = np.minimum(cpu / by_cpu, mem / by_mem)
        return room >= 1.0, room
    by_cpu = np.where(target.cpu > 0, cpu // np.maximum(target.cpu, 1), _NO_LIMIT)
    by_mem = np.where(target.mem > 0, mem // np.maximum(target.mem, 1), _NO_LIMIT)
    fits: BoolArray = (cpu >= target.cpu) & (mem >= target.mem)
    counted: IntArray = np.minimum(by_cpu, by_mem)
    return fits, counted


def fragments(target: TargetArrays, fits: BoolArray, room: FloatArray | IntArray, weight: FloatArray,
              terms: IntArray, total: IntArray) -> tuple[FloatArray, FloatArray]:
    """paper_fragment and capacity_fragment together, from `resource_room`'s `fits` and `room` and the terms
    stacked on the second-to-last axis (count, frag, slots: `stacked_card_terms`): the same operations on the
    same values in the same order, so the same floats, in one call for any leading axes (e.g. the nodes
    before and after a placement)."""
    count, frag, slots = terms[..., 0, :], terms[..., 1, :], terms[..., 2, :]
    base = total * target.total_prob
    runs = fits & (count >= target.num)
    paper: FloatArray = base - _ADD(np.where(runs, total[..., None] - frag, 0) * weight, axis=-1)
    if target.divisors is not None:
        copies: FloatArray | IntArray = np.floor(np.minimum(room, slots / target.divisors[2]))
    else:
        copies = np.minimum(room, slots // np.maximum(target.num, 1))
    used = np.maximum(copies, 0) * target.gpu_per_copy * weight
    capacity: FloatArray = base - _ADD(used, axis=-1)
    return paper, capacity


def cluster_fragmentation(snap: ClusterSnapshot, shapes: Sequence[TargetShape]) -> float:
    """The paper measure summed over all schedulable nodes, in GPU milli."""
    if not shapes or len(snap) == 0:
        return 0.0
    target = TargetArrays(shapes, snap)
    rows = np.flatnonzero(snap.schedulable)
    free = usable_free(snap, rows)
    f = paper_fragment(target, snap.free_cpu[rows], snap.free_mem[rows], target.weight[rows],
                       card_terms(free, target), free.sum(axis=1))
    return float(f.sum())
