"""The scheduler's fast paths give exactly what the plain formulas they replace give.

Each test keeps the plain formula (the code before the fast path) and compares it with the fast path on
random pools, requests and sequences of placements (hypothesis strategies of tests/scheduler_strategies.py).
"""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.scheduler_strategies import pool_nodes, replica_requests

from gpupool.domain.nodes import Node
from gpupool.domain.queues import QueueSpec
from gpupool.domain.resources import MILLI_PER_GPU, GpuRequest, ReplicaRequest, ResourceVector
from gpupool.scheduler.placement.filters import gpu_model_mask, share_terms
from gpupool.scheduler.placement.fragmentation import usable_free
from gpupool.scheduler.placement.registry import make_policy
from gpupool.scheduler.placement.resource_fit import negative_leftover
from gpupool.scheduler.placer import Placer
from gpupool.scheduler.queues import QuotaBook
from gpupool.scheduler.snapshot import ClusterSnapshot, IntArray
from gpupool.scheduler.types import ReplicaPlacement

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
    for name in ("full_free", "share_max_free", "free_gpu_total"):
        assert np.array_equal(getattr(snap, name), getattr(plain, name)), name
    rows = np.arange(len(snap))
    expected_free = np.where(snap.whole_ok | snap.share_ok, snap.free_milli, 0)
    assert np.array_equal(usable_free(snap, rows), expected_free)
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
