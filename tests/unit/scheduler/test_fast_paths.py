"""The scheduler's fast paths give exactly what the plain formulas they replace give.

Each test keeps the plain formula (the code before the fast path) and compares it with the fast path on
random pools, requests and sequences of placements (hypothesis strategies of tests/scheduler_strategies.py).
"""

from __future__ import annotations

import random

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tests.builders import node
from tests.scheduler_strategies import pool_nodes, replica_requests

from gpupool.domain.nodes import Node
from gpupool.domain.queues import QueueSpec
from gpupool.domain.resources import MILLI_PER_GPU, ZERO, GpuRequest, ReplicaRequest, ResourceVector
from gpupool.scheduler.placement.fgd import FgdPolicy
from gpupool.scheduler.placement.filters import (
    feasible_mask,
    gpu_model_mask,
    share_fits_any,
    share_on_card,
    share_terms,
)
from gpupool.scheduler.placement.fragmentation import (
    CardTerms,
    TargetArrays,
    TargetShape,
    capacity_fragment,
    card_terms,
    fragments,
    paper_fragment,
    resource_room,
    target_from_requests,
    usable_free,
)
from gpupool.scheduler.placement.registry import make_policy
from gpupool.scheduler.placement.resource_fit import negative_leftover
from gpupool.scheduler.placer import Placer
from gpupool.scheduler.queues import QuotaBook
from gpupool.scheduler.snapshot import ClusterSnapshot, IntArray
from gpupool.scheduler.types import GpuAssignment, ReplicaPlacement

vectors = st.builds(ResourceVector, st.integers(-5, 5), st.integers(-5, 5), st.integers(-5, 5))


@given(vectors, vectors)
def test_vector_comparisons_match_the_componentwise_definitions(a: ResourceVector, b: ResourceVector) -> None:
    pairs = list(zip(a.as_tuple(), b.as_tuple(), strict=True))
    assert a.exceeding(b) == tuple(n for n, (x, y) in zip(a.NAMES, pairs, strict=True) if x > y)
    assert a.fits_within(b) == all(x <= y for x, y in pairs)
    assert a.dominant_share(b) == max([x / y for x, y in pairs if y > 0], default=0.0)


def _plain_share_terms(snap: ClusterSnapshot, gpu: GpuRequest, rows: IntArray | None) -> tuple[np.ndarray, ...]:
    """share_terms as it was computed on every call before its sizes were cached."""
    sel = slice(None) if rows is None else rows
    total_mem = snap.gpu_mem_total[sel]
    if gpu.share_memory_mib:
        memory = np.full(total_mem.shape, gpu.share_memory_mib, dtype=np.int64)
        if gpu.share_milli:
            milli = np.full(total_mem.shape, gpu.share_milli, dtype=np.int64)
        else:
            milli = -((-gpu.share_memory_mib * MILLI_PER_GPU) // np.maximum(total_mem, 1))
    else:
        milli = np.full(total_mem.shape, gpu.share_milli, dtype=np.int64)
        memory = (gpu.share_milli * total_mem) // MILLI_PER_GPU
    fits = (snap.share_ok[sel] & (snap.free_milli[sel] >= milli) & (snap.free_gmem[sel] >= memory)
            & (milli <= MILLI_PER_GPU))
    if gpu.models or gpu.min_memory_mib:
        fits &= gpu_model_mask(snap, gpu)[sel]
    return fits, milli, memory


def _check_derived(snap: ClusterSnapshot, requests: list[ReplicaRequest]) -> None:
    """Every fast path against its plain formula, on the snapshot as it is now."""
    plain = snap.clone()
    plain._refresh(np.arange(len(plain)))  # the per-row refresh after each change equals a full recount
    for name in ("full_free", "share_max_free", "free_gpu_total", "share_largest", "share_largest_node"):
        assert np.array_equal(getattr(snap, name), getattr(plain, name)), name
    rows = np.arange(len(snap))
    expected_free = np.where(snap.whole_ok | snap.share_ok, snap.free_milli, 0)
    assert np.array_equal(usable_free(snap, rows), expected_free)
    assert snap.usable_out_of_range == int(((expected_free < 0) | (expected_free > MILLI_PER_GPU)).sum())
    max_cpu, max_gpu = max(int(snap.cap_cpu.max(initial=1)), 1), max(int(snap.cap_gpu.max(initial=1)), 1)
    for r in requests:
        leftover = (0.5 * (snap.free_cpu - r.cpu_milli) / max_cpu
                    + 0.5 * (snap.free_gpu_total - r.gpu.nominal_milli()) / max_gpu)
        assert np.array_equal(negative_leftover(snap, r, rows), -leftover)
        if r.gpu.kind != "share":
            continue
        for subset in (None, rows[::2], rows[1:]):
            fast = share_terms(snap, r.gpu, subset)
            fits, milli, memory = _plain_share_terms(snap, r.gpu, subset)
            assert np.array_equal(fast.fits, fits)
            assert np.array_equal(fast.milli, milli)
            assert np.array_equal(fast.memory, memory)
        fits, milli, memory = _plain_share_terms(snap, r.gpu, None)
        for row, column in np.ndindex(fits.shape):  # one card read as scalars
            expected_card = (int(milli[row, column]), int(memory[row, column])) if fits[row, column] else None
            assert share_on_card(snap, r.gpu, row, column) == expected_card
        # kept per share and node version, shared with clones (`plain` is one, in the same state, other versions)
        expected = _plain_share_terms(snap, r.gpu, None)[0].any(axis=1)
        assert np.array_equal(share_fits_any(snap, r.gpu), expected)
        assert np.array_equal(share_fits_any(plain, r.gpu), expected)


def test_usable_free_milli_follows_an_over_committed_card() -> None:
    """A forced assume takes a shared card below 0 free milli: the kept usable free milli and the count of cards
    out of 0..1000 follow it there and back (FGD then takes its formulas instead of its tables)."""
    snap = ClusterSnapshot([node("a").gpus(2, "A100", mode="shared").build(), node("m").gpus(1, "A100").build()])
    share = ReplicaPlacement("a", 1000, 1024, (GpuAssignment(index=1, milli=600, memory_mib=1024),))
    whole = ReplicaPlacement("m", 1000, 1024, (GpuAssignment(index=0, milli=1000, memory_mib=81920),))
    snap.assume_all([share, whole])
    snap.assume(share, force=True)  # card 1 of "a": 1000 - 600 - 600 = -200 milli
    _check_derived(snap, [])
    assert snap.usable_out_of_range == 1 and snap.usable_free_milli[0].tolist() == [1000, -200]
    for placement in (share, share, whole):
        snap.forget(placement)
        _check_derived(snap, [])
    assert snap.usable_out_of_range == 0 and snap.usable_free_milli.tolist() == [[1000, 1000], [1000, 0]]


@settings(max_examples=60, deadline=None)
@given(pool_nodes(), st.lists(replica_requests(), min_size=1, max_size=8), st.sampled_from(["bestfit", "fgd"]),
       st.randoms(use_true_random=False))
def test_fast_paths_match_plain_formulas_through_placements(nodes: list[Node], requests: list[ReplicaRequest],
                                                            policy: str, rng: random.Random) -> None:
    snap = ClusterSnapshot(nodes)
    placer = Placer(make_policy(policy), gang_topology=False)
    placed: list[ReplicaPlacement] = []
    _check_derived(snap, requests)
    for r in requests * 2:  # place each request twice, then give some of them back: every refresh path runs
        placement = placer.place_replica(snap, r)
        if placement is not None:
            snap.assume(placement)
            placed.append(placement)
        _check_derived(snap, requests)
    rng.shuffle(placed)
    for placement in placed[: len(placed) // 2]:
        snap.forget(placement)
        _check_derived(snap, requests)


@given(st.builds(ResourceVector, st.integers(0, 5), st.integers(0, 5), st.integers(0, 5)), vectors, vectors,
       st.booleans())
def test_within_guarantee_matches_its_rule(guarantee: ResourceVector, used: ResourceVector,
                                           demand: ResourceVector, other_guarantees_cpu: bool) -> None:
    queues = {"q": QueueSpec("q", guarantee)}
    if other_guarantees_cpu:  # another queue's CPU guarantee makes CPU governed
        queues["o"] = QueueSpec("o", ResourceVector(1, 0, 0))
    book = QuotaBook(queues, [], ResourceVector(100, 100, 100))
    book.add("q", used)
    after = used + demand
    plain = not any(r == "gpu" or getattr(guarantee, f) > 0
                    for r, f in (("cpu", "cpu_milli"), ("memory", "memory_mib"), ("gpu", "gpu_milli"))
                    if getattr(after, f) > getattr(guarantee, f) and r in book.governed)
    assert book.within_guarantee("q", demand) == plain


def _plain_admitted(book: QuotaBook, queue: str, demand: ResourceVector) -> bool:
    """Whether blocked_by_quota gave None for a queue without a limit, as it was computed before its fast path."""
    after = book.used(queue) + demand
    borrowed = book._over_guarantee(queue, after)
    used = book.used_total - book.used(queue)
    reserved = book.reserved_total - book._reserved(queue)
    physical_room, lendable_room = book.total - used, book.total - reserved
    field = {"cpu": "cpu_milli", "memory": "memory_mib", "gpu": "gpu_milli"}
    return not [r for r in borrowed if getattr(lendable_room, field[r]) < getattr(after, field[r])
                <= getattr(physical_room, field[r])]


amounts = st.builds(ResourceVector, st.integers(0, 6), st.integers(0, 6), st.integers(0, 6))
pools = st.builds(ResourceVector, st.integers(4, 16), st.integers(4, 16), st.integers(4, 16))


@settings(max_examples=400)  # borrowing that is owed to a queue that does not lend needs a few hundred draws
@given(st.lists(st.tuples(amounts, st.booleans(), amounts), min_size=1, max_size=3), pools, amounts)
# GPU on a pool of 10 beside a queue that keeps 2 (or 8) idle: 6 over a kept guarantee of 5 is idle capacity
# (10 - 2 >= 6), and exactly its guarantee of 3 borrows nothing although only 10 - 8 = 2 is lendable
@example([(ResourceVector(0, 0, 2), False, ZERO), (ResourceVector(0, 0, 5), False, ZERO)], ResourceVector(10, 10, 10),
         ResourceVector(0, 0, 6))
@example([(ResourceVector(0, 0, 8), False, ZERO), (ResourceVector(0, 0, 3), False, ZERO)], ResourceVector(10, 10, 10),
         ResourceVector(0, 0, 3))
def test_quota_admission_without_limit_matches_its_rule(queues: list[tuple[ResourceVector, bool, ResourceVector]],
                                                         total: ResourceVector, demand: ResourceVector) -> None:
    """Queues with guarantees (some lending, some not) and usage, asked for a demand: blocked_by_quota's
    integer fast path admits exactly when the rule on vectors does (so both give None alike)."""
    specs = {f"q{k}": QueueSpec(f"q{k}", guarantee, lend=lend) for k, (guarantee, lend, _) in enumerate(queues)}
    book = QuotaBook(specs, [], total)
    for k, (_, _, used) in enumerate(queues):
        book.add(f"q{k}", used)
    for queue in specs:
        plain = _plain_admitted(book, queue, demand)
        assert book._admitted_without_limit(book.spec(queue), queue, demand) == plain
        assert (book.blocked_by_quota(queue, demand) is None) == plain


def _plain_card_terms(free: IntArray, target: TargetArrays) -> CardTerms:
    """card_terms as it was counted before the per-card lookup table."""
    need = target.need[None, :, None]
    cards = free[:, None, :]
    enough = cards >= need
    return CardTerms(enough.sum(axis=2), np.where(enough, 0, cards).sum(axis=2), (cards // need).sum(axis=2))


target_shapes = st.lists(
    st.builds(TargetShape, st.sampled_from([0, 500, 4000]), st.sampled_from([0, 1024, 8192]), st.integers(0, 8),
              st.sampled_from([0, 1, 160, 230, 470, 500, 999, 1000]), st.just(()), st.floats(0.01, 1.0)),
    min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(pool_nodes(), target_shapes, st.integers(1, 4), st.data())
def test_card_terms_and_share_changes_match_their_counts(nodes: list[Node], shapes: list[TargetShape],
                                                         cards: int, data: st.DataObject) -> None:
    target = TargetArrays(shapes, ClusterSnapshot(nodes))
    rows = data.draw(st.integers(1, 6))
    # 0..1000 takes the lookup; an over-committed card's negative milli takes the count
    values = st.integers(0, 1000) | st.sampled_from([0, 1000, 999, 1, -250])
    free = np.array(data.draw(st.lists(st.lists(values, min_size=cards, max_size=cards), min_size=rows,
                                       max_size=rows)), dtype=np.int64)
    fast, plain = card_terms(free, target), _plain_card_terms(free, target)
    for name in ("count", "frag", "slots"):
        assert np.array_equal(getattr(fast, name), getattr(plain, name)), name
    share = data.draw(st.integers(1, 1000))
    milli = np.full(free.shape, share, dtype=np.int64)
    policy = FgdPolicy(shapes)
    policy._before_column = np.full((rows, 1), MILLI_PER_GPU + 1, dtype=np.int64)
    stacked = np.stack((plain.count, plain.frag, plain.slots), axis=1)
    in_range = bool(free.min() >= 0 and free.max() <= MILLI_PER_GPU)
    changed = policy._share_after(target, stacked, free, milli, share, in_range)
    a = free[:, :, None]
    expected = CardTerms(plain.count[:, None, :], plain.frag[:, None, :], plain.slots[:, None, :]).changed(
        a, a - milli[:, :, None], target.need)
    for k, name in enumerate(("count", "frag", "slots")):  # after the share on each card, then before it
        assert np.array_equal(changed[:, :cards, k], getattr(expected, name)), name
        assert np.array_equal(changed[:, cards, k], getattr(plain, name)), name


@settings(max_examples=60, deadline=None)
@given(pool_nodes(), target_shapes, st.integers(1, 4), st.data())
def test_fragments_together_equal_each_measure(nodes: list[Node], shapes: list[TargetShape], cards: int,
                                               data: st.DataObject) -> None:
    """`fragments` (both measures in one evaluation, CPU and memory through `resource_room`) gives the very
    floats of paper_fragment and capacity_fragment, with float divisors and without (a shape asking 0 CPU or
    memory), for free CPU and memory below, at and above each shape's request, negative ones included."""
    snap = ClusterSnapshot(nodes)
    target = TargetArrays(shapes, snap)
    drawn = data.draw(st.integers(1, 6))
    free = np.array(data.draw(st.lists(st.lists(st.integers(-250, 1000), min_size=cards, max_size=cards),
                                       min_size=drawn, max_size=drawn)), dtype=np.int64)
    cpu = np.array(data.draw(st.lists(st.integers(-10, 10**6), min_size=drawn, max_size=drawn)), np.int64)
    mem = np.array(data.draw(st.lists(st.integers(-10, 10**6), min_size=drawn, max_size=drawn)), np.int64)
    # and nodes with all cards free at each shape's own CPU and memory, and one less of either: the edges
    edges = [(c + dc, m + dm) for c, m in zip(target.cpu.tolist(), target.mem.tolist(), strict=True)
             for dc, dm in ((0, 0), (-1, 0), (0, -1))]
    cpu = np.concatenate((cpu, [c for c, _ in edges]))
    mem = np.concatenate((mem, [m for _, m in edges]))
    free = np.concatenate((free, np.full((len(edges), cards), MILLI_PER_GPU)))
    weight = np.tile(target.prob, (len(cpu), 1))  # every shape weighs (a node's row of target.weight may hold zeros)
    terms, total = _plain_card_terms(free, target), free.sum(axis=1)
    stacked = np.stack((terms.count, terms.frag, terms.slots), axis=1)
    fits, room = resource_room(target, cpu, mem)
    paper, capacity = fragments(target, fits, room, weight, stacked, total)
    assert np.array_equal(paper, paper_fragment(target, cpu, mem, weight, terms, total))
    assert np.array_equal(capacity, capacity_fragment(target, cpu, mem, weight, terms, total))


@settings(max_examples=40, deadline=None)
@given(pool_nodes(), st.lists(replica_requests(), min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_share_growths_by_card_value_match_those_per_card(nodes: list[Node], requests: list[ReplicaRequest],
                                                          rng: random.Random) -> None:
    """For more than a few node states FGD evaluates a share once per distinct free milli of a node's fitting cards; its
    growths and cards equal those of the evaluation per card, on the nodes of random placements. The card terms
    it keeps per node version (used for many stale rows) equal a fresh count at every step."""
    shapes = target_from_requests(requests)
    snap = ClusterSnapshot(nodes)
    policy = FgdPolicy(shapes)
    placer = Placer(policy, gang_topology=False)
    shares = [r for r in requests if r.gpu.kind == "share" and r.gpu.share_milli] + [
        ReplicaRequest(500, 1024, GpuRequest(share_milli=m)) for m in (100, 250, 500)]
    for r in requests * 3:  # varied card states: several shares and whole cards taken
        placement = placer.place_replica(snap, r)
        if placement is not None and rng.random() < 0.8:
            snap.assume(placement)
        if not shapes:
            return
        target = policy._bind(snap)
        for share in shares:
            rows = feasible_mask(snap, share).nonzero()[0]
            if rows.size == 0:
                continue
            free = usable_free(snap, rows)
            in_range = bool(free.min() >= 0 and free.max() <= MILLI_PER_GPU)
            terms = policy._node_terms(snap, target, rows, free, in_range)  # kept per node version: as counted
            plain = _plain_card_terms(free, target)
            assert np.array_equal(terms, np.stack((plain.count, plain.frag, plain.slots), axis=1))
            cache = policy._shape_cache(share, snap, target)
            by_card = policy._growths_exact(snap, target, cache, rows, free, terms, in_range, by_value=False)
            by_value = policy._growths_exact(snap, target, cache, rows, free, terms, in_range, by_value=True)
            for name in ("paper", "capacity", "column"):
                assert np.array_equal(getattr(by_value, name), getattr(by_card, name)), name


def _plain_fgd_ranking(shapes: list[TargetShape], snap: ClusterSnapshot, request: ReplicaRequest,
                       rows: IntArray) -> tuple[np.ndarray, np.ndarray | None]:
    """FGD's ranking of `rows` (and the share card per row) computed from scratch with the plain formulas: no
    cached node terms, growths or lookup tables."""
    target = TargetArrays(shapes, snap)
    free = usable_free(snap, rows)
    terms, total = _plain_card_terms(free, target), free.sum(axis=1)
    cpu, mem, weight = snap.free_cpu[rows], snap.free_mem[rows], target.weight[rows]
    before = (target, cpu, mem, weight, terms, total)
    paper_before, capacity_before = paper_fragment(*before), capacity_fragment(*before)
    cpu, mem, gpu, columns = cpu - request.cpu_milli, mem - request.memory_mib, request.gpu, None
    if gpu.kind != "share":
        taken = gpu.count if gpu.kind == "whole" else 0
        after = (target, cpu, mem, weight, terms.whole_taken(taken, target), total - taken * MILLI_PER_GPU)
        paper, capacity = paper_fragment(*after) - paper_before, capacity_fragment(*after) - capacity_before
    else:
        share = share_terms(snap, gpu, rows)
        a = free[:, :, None]
        expanded = CardTerms(terms.count[:, None, :], terms.frag[:, None, :], terms.slots[:, None, :])
        after = (target, cpu[:, None], mem[:, None], weight[:, None, :],
                 expanded.changed(a, a - share.milli[:, :, None], target.need), total[:, None] - share.milli)
        paper = paper_fragment(*after) - paper_before[:, None]
        capacity = capacity_fragment(*after) - capacity_before[:, None]
        columns = np.where(share.fits, (paper / 25.0).round() * 1e8 + capacity, np.inf).argmin(axis=1)
        pick = np.arange(len(rows))
        paper, capacity = paper[pick, columns], capacity[pick, columns]
    keys = (-np.arange(len(rows)), negative_leftover(snap, request, rows), -capacity.round(6), -(paper / 25.0).round())
    ranks = np.empty(len(rows))
    ranks[np.lexsort(keys)] = np.arange(len(rows))
    return ranks, columns


@settings(max_examples=40, deadline=None)
@given(pool_nodes(), st.lists(replica_requests(), min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_fgd_scores_with_its_caches_match_the_plain_formulas(nodes: list[Node], requests: list[ReplicaRequest],
                                                         rng: random.Random) -> None:
    """FGD with the target of the requests keeps node terms and growths across placements and removals; at every
    step its ranking, best row and share cards equal those of the plain formulas computed afresh."""
    shapes = target_from_requests(requests)
    snap = ClusterSnapshot(nodes)
    policy = FgdPolicy(shapes)
    placer = Placer(policy, gang_topology=False)
    placed: list[ReplicaPlacement] = []

    def check() -> None:
        for r in requests:
            rows = feasible_mask(snap, r).nonzero()[0]
            if rows.size == 0 or not shapes:
                continue
            kept = policy.score(snap, r, rows)
            ranks, columns = _plain_fgd_ranking(shapes, snap, r, rows)
            assert np.array_equal(kept.all_scores(), ranks)
            assert kept.top() == int(np.argmax(ranks))
            if kept.share_columns is None or columns is None:
                assert kept.share_columns is None and columns is None
            else:
                assert np.array_equal(kept.share_columns, columns)

    for r in requests * 2:
        placement = placer.place_replica(snap, r)
        if placement is not None:
            snap.assume(placement)
            placed.append(placement)
        check()
    rng.shuffle(placed)
    for placement in placed[: len(placed) // 2]:
        snap.forget(placement)
        check()
