"""FGD's node state numbers and the snapshot's largest share per card and row refresh give exactly what the
plain formulas give (the helpers and strategies of test_fast_paths.py)."""

from __future__ import annotations

import random
from dataclasses import replace
from unittest import mock

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.builders import node, request
from tests.scheduler_strategies import pool_nodes, replica_requests
from tests.unit.scheduler.test_fast_paths import _check_derived, _plain_fgd_ranking, _plain_share_terms

from gpupool.domain.nodes import Node
from gpupool.domain.resources import MILLI_PER_GPU, GpuRequest, ReplicaRequest
from gpupool.scheduler.placement import fgd
from gpupool.scheduler.placement.fgd import FgdPolicy
from gpupool.scheduler.placement.filters import feasible_mask, share_fits_any, share_terms
from gpupool.scheduler.placement.fragmentation import TargetShape, target_from_requests, usable_free
from gpupool.scheduler.placer import Placer
from gpupool.scheduler.snapshot import ClusterSnapshot, IntArray
from gpupool.scheduler.types import GpuAssignment, ReplicaPlacement


def _twice(nodes: list[Node]) -> list[Node]:
    """The pool and a copy of each node under another name: nodes in equal states that FGD scores once."""
    return nodes + [replace(n, name=f"{n.name}-copy") for n in nodes]


@settings(max_examples=40, deadline=None)
@given(pool_nodes(), st.lists(replica_requests(), min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_fgd_scoring_equal_node_states_once_matches_the_plain_formulas(nodes: list[Node],
                                                                       requests: list[ReplicaRequest],
                                                                       rng: random.Random) -> None:
    """With every stale row deduplicated (the threshold set to 0), FGD scores nodes of equal state numbers once;
    through placements and removals its ranking and share cards equal the plain formulas computed afresh. At most
    6 numbered states: the numbering starts again often."""
    shapes = target_from_requests(requests)
    if not shapes:
        return
    snap = ClusterSnapshot(_twice(nodes))
    policy = FgdPolicy(shapes)
    placer = Placer(policy, gang_topology=False)
    placed: list[ReplicaPlacement] = []

    def check() -> None:
        for r in requests:
            rows = feasible_mask(snap, r).nonzero()[0]
            if rows.size:
                _assert_plain_ranking(policy, shapes, snap, r, rows)

    with mock.patch.object(fgd, "_DEDUPE_ABOVE", 0), mock.patch.object(fgd, "_STATE_NUMBERS", 6):
        for r in requests * 2:
            placement = placer.place_replica(snap, r)
            if placement is not None and rng.random() < 0.8:
                snap.assume(placement)
                placed.append(placement)
            check()
        rng.shuffle(placed)
        for placement in placed[: len(placed) // 2]:
            snap.forget(placement)
            check()


def test_fgd_state_numbers_tell_apart_cards_that_take_a_share_differently() -> None:
    """Two nodes in equal free states whose cards are the same models in another order: a share that asks for
    one model fits a different card on each, so FGD scores them apart (and both as the plain formulas)."""
    nodes = [node(name).gpus(1, first, mode="shared").gpus(1, second, mode="shared").build()
             for name, first, second in (("a", "A100", "V100"), ("b", "V100", "A100"))]
    share = request(cpu=1, memory="1GiB", gpu={"share": 0.5, "model": "A100"})
    shapes = target_from_requests([request(cpu=1, memory="1GiB", gpu=0.5), share])
    snap = ClusterSnapshot(nodes)
    policy = FgdPolicy(shapes)
    with mock.patch.object(fgd, "_DEDUPE_ABOVE", 0):
        _assert_plain_ranking(policy, shapes, snap, share, np.arange(2))
        assert policy.score(snap, share, np.arange(2)).share_columns.tolist() == [0, 1]


def _assert_plain_ranking(policy: FgdPolicy, shapes: list[TargetShape], snap: ClusterSnapshot,
                          r: ReplicaRequest, rows: IntArray) -> None:
    kept = policy.score(snap, r, rows)
    ranks, columns = _plain_fgd_ranking(shapes, snap, r, rows)
    assert np.array_equal(kept.all_scores(), ranks)
    if kept.share_columns is None or columns is None:
        assert kept.share_columns is None and columns is None
    else:
        assert np.array_equal(kept.share_columns, columns)


@settings(max_examples=40, deadline=None)
@given(pool_nodes(), st.lists(replica_requests(), min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_fgd_state_numbers_are_equal_exactly_for_equal_states(nodes: list[Node], requests: list[ReplicaRequest],
                                                             rng: random.Random) -> None:
    """The node state numbers FGD keeps per node version, asked for random subsets of rows through placements
    and removals with at most 3 numbered states (the numbering starts again often): two rows have equal numbers
    exactly when their states (as the module says what a state is, per kind) are equal."""
    shapes = target_from_requests(requests)
    if not shapes:
        return
    snap = ClusterSnapshot(_twice(nodes))
    policy = FgdPolicy(shapes)
    placer = Placer(policy, gang_topology=False)
    target = policy._bind(snap)
    placed: list[ReplicaPlacement] = []

    def state(row: int, kind: str) -> tuple[object, ...]:
        free = usable_free(snap, np.array([row]))[0].tolist()
        common = (int(snap.free_cpu[row]), int(snap.free_mem[row]), int(target.klass[row]))
        if kind == "whole":
            return (*common, tuple(sorted(free)))
        if kind == "largest":  # the largest share by milli per card (0: none), the plain check at every size
            sizes = np.arange(1, MILLI_PER_GPU + 1)[:, None]
            fits = (snap.share_ok[row] & (snap.free_milli[row] >= sizes)
                    & (snap.free_gmem[row] >= sizes * snap.gpu_mem_total[row] // MILLI_PER_GPU))
            largest = np.where(fits, sizes, 0).max(axis=0)
            return (*common, tuple(free), tuple(largest.tolist()))
        hardware = (tuple(g.model for g in snap.nodes[row].gpus), snap.gpu_mem_total[row].tolist(),
                    snap.share_ok[row].tolist(), snap.usable_card[row].tolist())
        return (*common, hardware, tuple(free), tuple(snap.free_gmem[row].tolist()))

    def check() -> None:
        for kind in ("whole", "share", "largest"):
            rows = np.array(sorted(rng.sample(range(len(snap)), rng.randint(1, len(snap)))))
            numbers = policy._states[kind].of(snap, target, rows, usable_free(snap, rows)).tolist()
            states = [state(int(row), kind) for row in rows]
            for i, j in np.ndindex(len(rows), len(rows)):
                assert (numbers[i] == numbers[j]) == (states[i] == states[j])

    with mock.patch.object(fgd, "_STATE_NUMBERS", 3):
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


def test_largest_share_by_milli_decides_a_card_at_the_edges_of_its_memory() -> None:
    """The snapshot's largest share by milli alone per card and node (compared by `share_terms` and
    `share_fits_any`) against the plain check, for every share size on cards whose free GPU memory is exactly
    what a share takes, and one MiB less (cards of 16 GiB, 80 GiB, an odd 12,345 MiB and 0 MiB, whose free memory
    goes below 0 when a forced assume takes one MiB)."""
    for memory in ("16GiB", "80GiB", "12345MiB", "0GiB"):
        snap = ClusterSnapshot([node("a").gpus(2, "A100", memory=memory, mode="shared").build()])
        total = int(snap.gpu_mem_total[0, 0])
        for milli in (*range(1, MILLI_PER_GPU + 1, 37), 999, MILLI_PER_GPU):
            for spare in (0, -1):  # free memory: exactly what a share of `milli` takes, then one MiB less
                taken = total - milli * total // MILLI_PER_GPU - spare
                hold = ReplicaPlacement("a", 0, 0, (GpuAssignment(index=0, milli=0, memory_mib=taken),
                                                    GpuAssignment(index=1, milli=MILLI_PER_GPU - milli + 1,
                                                                  memory_mib=0)))
                snap.assume(hold, force=True)
                for size in {milli - 1, milli, milli + 1} - {0}:
                    gpu = GpuRequest(share_milli=size)
                    fits = _plain_share_terms(snap, gpu, None)[0]
                    assert np.array_equal(share_terms(snap, gpu).fits, fits), (memory, milli, spare, size)
                    assert np.array_equal(share_fits_any(snap, gpu), fits.any(axis=1))
                snap.forget(hold)


def test_row_refresh_of_a_node_whose_only_card_is_over_committed() -> None:
    """A node with one shared card taken below 0 free milli by a forced assume: the row refresh (plain Python)
    gives what the full recount gives, the negative free milli included, there and back."""
    snap = ClusterSnapshot([node("s").gpus(1, "A100", mode="shared").build()])
    share = ReplicaPlacement("s", 1000, 1024, (GpuAssignment(index=0, milli=700, memory_mib=70000),))
    snap.assume(share)
    snap.assume(share, force=True)
    _check_derived(snap, [])
    assert snap.share_max_free[0] == -400 and snap.share_largest_node[0] < 0
    snap.forget(share)
    _check_derived(snap, [])
