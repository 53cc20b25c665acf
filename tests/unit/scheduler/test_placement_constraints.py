"""Placement: which node and which cards a replica gets, under sharing modes, models, labels, taints, NVLink
and MIG. Cards are written as (index, milli, GPU memory in MiB[, MIG instance])."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tests.builders import cycle, job, node, on, request, running, snapshot

from gpupool.scheduler.decisions import Decisions
from gpupool.scheduler.placement.registry import make_policy
from gpupool.scheduler.placer import Placer
from gpupool.scheduler.types import ReplicaPlacement

GiB = 1024


def cards(placement: ReplicaPlacement) -> list[tuple[int, ...]]:
    return [(g.index, g.milli, g.memory_mib) + ((g.mig_instance,) if g.mig_instance is not None else ())
            for g in placement.gpus]


def where(decisions: Decisions) -> dict[str, list[tuple[str, list[tuple[int, ...]]]]]:
    """workload id -> [(node, cards)] of every bind."""
    return {b.workload_id: [(p.node, cards(p)) for p in b.placements] for b in decisions.binds}


@pytest.mark.parametrize(("policy", "expected"), [
    # bestfit and binpack send the second half to the card the first one half-filled (tightest / fullest card);
    # 0.5 of an 80 GiB card takes 40 GiB of its memory
    ("bestfit", {"a": [("n1", [(0, 500, 40 * GiB)])], "b": [("n1", [(0, 500, 40 * GiB)])]}),
    ("binpack", {"a": [("n1", [(0, 500, 40 * GiB)])], "b": [("n1", [(0, 500, 40 * GiB)])]}),
    ("fgd", {"a": [("n1", [(0, 500, 40 * GiB)])], "b": [("n1", [(0, 500, 40 * GiB)])]}),
    # spread sends it to the emptiest card
    ("spread", {"a": [("n1", [(0, 500, 40 * GiB)])], "b": [("n1", [(1, 500, 40 * GiB)])]}),
])
def test_two_half_shares_pack_onto_one_card_unless_spreading(policy: str, expected: dict[str, object]) -> None:
    pool = [node("n1").gpus(2, mode="shared").build()]
    decisions = cycle(pool, [job("a").gpu(0.5).build(), job("b").at(1).gpu(0.5).build()], policy=policy)
    assert where(decisions) == expected


def test_a_share_sized_by_memory_takes_compute_in_proportion() -> None:
    pool = [node("n1").gpus(1, memory="40GiB", mode="mps").build()]
    decisions = cycle(pool, [job("m").replicas(1, gpu={"memory": "10GiB"}).build(),
                             job("both").at(1).replicas(1, gpu={"share": 0.1, "memory": "30GiB"}).build()])
    # 10 GiB of a 40 GiB card: ceil(10240 * 1000 / 40960) = 250 milli; the second share takes as asked:
    # 100 milli and 30 GiB (30 + 10 = 40 GiB: the card's memory is now all taken)
    assert where(decisions) == {"m": [("n1", [(0, 250, 10 * GiB)])], "both": [("n1", [(0, 100, 30 * GiB)])]}


def test_a_share_does_not_fit_a_card_whose_memory_is_taken() -> None:
    pool = [node("n1").gpus(1, memory="40GiB", mode="shared").build()]
    busy = running("r", [on("n1", gpus={0: 200}, gpu_memory={0: "35GiB"})])
    # 0.5 of a 40 GiB card needs 20 GiB; only 40 - 35 = 5 GiB are free, though 800 milli are
    decisions = cycle(pool, [job("s").gpu(0.5).build()], [busy])
    assert decisions.pending[0].reason.endswith("1 with too little free GPU for 0.5 GPU")


def test_whole_gpu_requests_skip_partly_used_shared_cards() -> None:
    pool = [node("n1").gpus(3, mode="shared").build()]
    shares = running("r", [on("n1", gpus={0: 300}), on("n1", gpus={2: 100})])
    decisions = cycle(pool, [job("whole").gpu(1).build(), job("two").at(1).gpu(2).build()], [shares])
    # cards 0 and 2 hold shares; only card 1 is fully free, so the 2-card job waits
    assert where(decisions) == {"whole": [("n1", [(1, 1000, 80 * GiB)])]}
    assert decisions.pending[0].workload_id == "two"


def test_whole_cards_prefer_exclusive_cards_keeping_shared_ones_for_shares() -> None:
    pool = [node("n1").gpus(2, mode="shared").gpus(2, mode="exclusive").build()]
    decisions = cycle(pool, [job("w").gpu(1).build()])
    assert where(decisions) == {"w": [("n1", [(2, 1000, 80 * GiB)])]}  # card 2: the first exclusive card


def test_exclusive_and_mig_cards_refuse_shares() -> None:
    pool = [node("ex").gpus(2).build(), node("mig").mig("A100", ["1g.10gb"] * 7).build()]
    decisions = cycle(pool, [job("s").gpu(0.25).build()])
    (pending,) = decisions.pending
    assert "2 without a usable GPU that takes shares (shared or mps mode)" in pending.reason


@pytest.mark.parametrize(("models", "expected_node"), [
    (["H100"], "h"),                   # "H100" selects the H100-SXM5 cards by family
    (["A100", "H100"], "a"),           # either; both nodes are empty, bestfit ties go to node order
    (["A100-SXM4-80GB"], "a"),
])
def test_gpu_model_constraints(models: list[str], expected_node: str) -> None:
    pool = [node("a").gpus(2, "A100-SXM4-80GB").build(), node("h").gpus(2, "H100-SXM5").build()]
    decisions = cycle(pool, [job("m").replicas(1, gpu={"count": 2, "model": models}).build()])
    assert [p.node for p in decisions.binds[0].placements] == [expected_node]


def test_a_model_that_is_busy_waits_rather_than_taking_another_model() -> None:
    pool = [node("a").gpus(1, "A100").build(), node("h").gpus(1, "H100").build()]
    decisions = cycle(pool, [job("m").replicas(1, gpu={"count": 1, "model": "H100"}).build()],
                      [running("r", [on("h", gpus={0: 1000})])])
    assert not decisions.binds
    # node a has no H100; node h has its only H100 taken
    assert decisions.pending[0].reason.endswith("1 without a H100 GPU; 1 with too little free GPU for 1 GPU (H100)")


def test_node_selectors_and_taints() -> None:
    pool = [node("tainted").gpus(1).taint("dedicated").label("zone", "x").build(),
            node("plain").gpus(1).label("zone", "y").build()]
    pending = [
        job("anywhere").replicas(1, gpu=1).build(),                                           # only "plain"
        job("zone-x").at(1).replicas(1, gpu=1, node_selector=(("zone", "x"),)).build(),       # x is tainted
        job("tolerant").at(2).replicas(1, gpu=1, node_selector=(("zone", "x"),), tolerations=("dedicated",)).build(),
    ]
    decisions = cycle(pool, pending)
    assert where(decisions) == {"anywhere": [("plain", [(0, 1000, 80 * GiB)])],
                                "tolerant": [("tainted", [(0, 1000, 80 * GiB)])]}
    (pending_x,) = decisions.pending
    assert pending_x.reason.endswith("2 excluded by node selector or taints")


def test_cpu_only_work_stays_off_gpu_nodes_unless_nothing_else_fits() -> None:
    pool = [node("gpu").cpu(64).gpus(1).build(), node("cpu").cpu(4).build()]
    pending = [job(f"c{k}").at(k).replicas(1, cpu=2).build() for k in range(3)]
    decisions = cycle(pool, pending, policy="spread")
    # spread would prefer the emptier 64-core GPU node, but CPU-only work fills the 4-core node first
    # (2 + 2 cores); the third no longer fits there and takes the GPU node
    assert {w: p[0][0] for w, p in where(decisions).items()} == {"c0": "cpu", "c1": "cpu", "c2": "gpu"}


def test_the_profile_switch_lets_cpu_only_work_onto_gpu_nodes() -> None:
    pool = [node("gpu").cpu(64).gpus(1).build(), node("cpu").cpu(4).build()]
    decisions = cycle(pool, [job("c").replicas(1, cpu=2).build()], policy="spread", cpu_avoids_gpu_nodes=False)
    # spread, allocated after: gpu node (2/64 + 1/256 + 0) / 3 = 0.0117 < cpu node (2/4 + 1/256) / 2 = 0.252
    assert where(decisions) == {"c": [("gpu", [])]}


def test_multi_gpu_replicas_prefer_one_nvlink_group() -> None:
    # groups: cards 0-3 and 4-7; cards 0, 4, 5 are taken -> free: group 0 {1, 2, 3}, group 1 {6, 7}
    pool = [node("n").gpus(8, nvlink=[0, 0, 0, 0, 1, 1, 1, 1]).build()]
    busy = running("r", [on("n", gpus={0: 1000, 4: 1000, 5: 1000})])
    decisions = cycle(pool, [job("two").gpu(2).build(), job("three").at(1).gpu(3).build()], [busy])
    # two: the smallest group that holds 2 is group 1 (2 free) -> cards 6, 7, keeping group 0 whole for three
    assert where(decisions) == {"two": [("n", [(6, 1000, 80 * GiB), (7, 1000, 80 * GiB)])],
                                "three": [("n", [(1, 1000, 80 * GiB), (2, 1000, 80 * GiB), (3, 1000, 80 * GiB)])]}


def test_without_a_group_that_holds_them_cards_span_groups_lowest_first() -> None:
    pool = [node("n").gpus(4, nvlink=[0, 0, 1, 1]).build()]
    busy = running("r", [on("n", gpus={0: 1000})])
    decisions = cycle(pool, [job("three").gpu(3).build()], [busy])
    assert [c[0] for c in cards(decisions.binds[0].placements[0])] == [1, 2, 3]


def test_mig_instances_are_placed_by_profile() -> None:
    # card 0: 3g.40gb, 1g.10gb, 1g.10gb; card 1: 1g.10gb, 2g.20gb
    pool = [node("m").mig("A100", ["3g.40gb", "1g.10gb", "1g.10gb"]).mig("A100", ["1g.10gb", "2g.20gb"]).build()]
    pending = [
        job("two-small").replicas(1, gpu={"mig": "1g.10gb", "count": 2}).build(),
        job("one-small").at(1).replicas(1, gpu={"mig": "1g.10gb"}).build(),
        job("medium").at(2).replicas(1, gpu={"mig": "2g.20gb"}).build(),
        job("medium-2").at(3).replicas(1, gpu={"mig": "2g.20gb"}).build(),
    ]
    decisions = cycle(pool, pending)
    # 1g.10gb = floor(1/7 * 1000) = 142 milli and 10 GiB; 2g.20gb = floor(2/7 * 1000) = 285 milli and 20 GiB.
    # two-small: cards with the fewest free 1g instances first: card 1 (one: #0), then card 0 (#1)
    assert where(decisions) == {
        "two-small": [("m", [(1, 142, 10 * GiB, 0), (0, 142, 10 * GiB, 1)])],
        "one-small": [("m", [(0, 142, 10 * GiB, 2)])],
        "medium": [("m", [(1, 285, 20 * GiB, 1)])],
    }
    (waiting,) = decisions.pending
    assert waiting.workload_id == "medium-2"
    assert waiting.reason.endswith("1 with too little free GPU for 1 x MIG 2g.20gb")


def test_unhealthy_cards_are_never_chosen() -> None:
    built = node("n").gpus(2).build()
    sick = replace(built, gpus=(replace(built.gpus[0], healthy=False), built.gpus[1]))
    placer = Placer(make_policy("bestfit"))
    placement = placer.place_replica(snapshot([sick]), request(gpu=1))
    assert placement is not None and cards(placement) == [(1, 1000, 80 * GiB)]
    assert placer.place_replica(snapshot([sick]), request(gpu=2)) is None
