"""Placement policies on small tables: each policy's scores (arithmetic in comments) and choices of node and
card; FGD with a given target, learning its target from submissions, and its fallback to bestfit."""

from __future__ import annotations

import random

import numpy as np
import pytest
from tests.builders import node, on, request, running, snapshot

from gpupool.domain.errors import ValidationError
from gpupool.scheduler.placement.base import PlacementPolicy
from gpupool.scheduler.placement.fgd import LEARN_EVERY, FgdPolicy
from gpupool.scheduler.placement.fragmentation import TargetShape, target_from_requests
from gpupool.scheduler.placement.registry import make_policy, policy_names
from gpupool.scheduler.placer import Placer
from gpupool.scheduler.profile import SchedulerProfile
from gpupool.scheduler.snapshot import ClusterSnapshot

HALF_GPU_TARGET = [TargetShape(1000, 1024, 1, 500, (), 1.0)]  # every expected request: 1 CPU, 1 GiB, 0.5 GPU


def three_nodes() -> ClusterSnapshot:
    """a, b, c: 32 cores, 128 GiB, 4 exclusive cards each.
    a holds 8 cores, 32 GiB, 3 cards (free: 24 cores, 96 GiB, 1 card);
    b holds 26 cores, 16 GiB, 1 card (free: 6 cores, 112 GiB, 3 cards); c is empty."""
    nodes = [node(n).cpu(32).memory("128GiB").gpus(4).build() for n in "abc"]
    return snapshot(nodes, [
        running("ra", [on("a", cpu=8, memory="32GiB", gpus={0: 1000, 1: 1000, 2: 1000})]),
        running("rb", [on("b", cpu=26, memory="16GiB", gpus={0: 1000})]),
    ])


ONE_GPU = request(cpu=4, memory="16GiB", gpu=1)


@pytest.mark.parametrize(("policy", "scores", "chosen"), [
    # binpack, the mean allocated fraction of CPU, memory, GPU after placing 4 cores, 16 GiB, 1 card:
    #   a: (12/32 + 48/128 + 4/4) / 3 = (0.375 + 0.375 + 1) / 3 = 0.5833
    #   b: (30/32 + 32/128 + 2/4) / 3 = (0.9375 + 0.25 + 0.5) / 3 = 0.5625
    #   c: (4/32 + 16/128 + 1/4) / 3 = 0.5 / 3 = 0.1667                      -> most allocated: a
    ("binpack", [0.58333, 0.5625, 0.16667], "a"),
    # spread: the same fractions negated                                       -> least allocated: c
    ("spread", [-0.58333, -0.5625, -0.16667], "c"),
    # bestfit, -(0.5 (free cpu - 4) / 32 + 0.5 (free gpu - 1000) / 4000) with the largest node's 32 cores, 4 cards:
    #   a: -(0.5 * 20/32 + 0.5 * 0/4000)    = -0.3125
    #   b: -(0.5 * 2/32 + 0.5 * 2000/4000)  = -(0.03125 + 0.25) = -0.28125
    #   c: -(0.5 * 28/32 + 0.5 * 3000/4000) = -(0.4375 + 0.375) = -0.8125     -> least leftover: b
    ("bestfit", [-0.3125, -0.28125, -0.8125], "b"),
    # fgd without a target (nothing observed yet) scores exactly like bestfit
    ("fgd", [-0.3125, -0.28125, -0.8125], "b"),
])
def test_each_policy_scores_and_chooses_on_a_small_table(policy: str, scores: list[float], chosen: str) -> None:
    snap = three_nodes()
    scored = make_policy(policy).score(snap, ONE_GPU, np.arange(3))
    np.testing.assert_allclose(scored.scores, scores, atol=1e-5)
    placement = Placer(make_policy(policy)).place_replica(snap, ONE_GPU)
    assert placement is not None and placement.node == chosen


def test_fgd_with_a_whole_gpu_target_breaks_equal_growth_by_leftover() -> None:
    # target: 1-card jobs. All cards are whole (free 0 or 1000): taking one leaves no fragment anywhere,
    # so every node's growth is 0, the capacity measure's growth is 0 too (a: 1 copy -> 0 copies, 1000 -> 0 idle;
    # b: 3 -> 2 copies; c: 4 -> 3), and the bestfit leftover decides: b (-0.28125) > a (-0.3125) > c (-0.8125)
    policy = make_policy("fgd", target=[TargetShape(1000, 1024, 1, 1000, (), 1.0)])
    scored = policy.score(three_nodes(), ONE_GPU, np.arange(3))
    np.testing.assert_array_equal(scored.all_scores(), [1, 2, 0])  # ranks, higher is better
    assert scored.top() == 1  # the fast path agrees with the full ranking


def two_shared_nodes() -> ClusterSnapshot:
    """n1 and n2 with one shared card each; 300 milli of n1's card are taken (700 free)."""
    nodes = [node("n1").gpus(1, mode="shared").build(), node("n2").gpus(1, mode="shared").build()]
    return snapshot(nodes, [running("r", [on("n1", gpus={0: 300})])])


@pytest.mark.parametrize(("policy", "chosen"), [
    # bestfit: n1 leftover 0.5 (63-1)/64 + 0.5 (700-300)/1000 = 0.684 < n2 0.5 (63-1)/64 + 0.5 (1000-300)/1000 = 0.842
    ("bestfit", "n1"),
    ("binpack", "n1"),
    ("spread", "n2"),
    # fgd against "0.5 GPU" jobs: on n1 the card goes 700 -> 400, below 500, so a 0.5 job no longer runs there and
    # all 400 free milli become fragment: growth +400; on n2 it goes 1000 -> 700, still >= 500: growth 0 -> n2
    ("fgd", "n2"),
])
def test_a_share_goes_where_it_fragments_least_under_fgd(policy: str, chosen: str) -> None:
    target = HALF_GPU_TARGET if policy == "fgd" else None
    assert chosen_node(make_policy(policy, target=target), two_shared_nodes()) == chosen


def chosen_node(policy: PlacementPolicy, snap: ClusterSnapshot) -> str | None:
    """The node a 0.3 share goes to under `policy`."""
    placement = Placer(policy).place_replica(snap, request(gpu=0.3))
    return None if placement is None else placement.node


@pytest.mark.parametrize(("policy", "card"), [
    # one node, shared cards with 1000 and 700 free milli, a 0.3 share:
    ("bestfit", 1),  # the tightest card that fits: 700
    ("binpack", 1),  # the fullest card
    ("spread", 0),   # the emptiest card
    # fgd vs "0.5 GPU" jobs: card 0 1000 -> 700 keeps both cards >= 500 (growth 0); card 1 700 -> 400 strands
    # 400 milli (growth +400)                                           -> card 0
    ("fgd", 0),
])
def test_the_card_a_share_gets(policy: str, card: int) -> None:
    snap = snapshot([node("n").gpus(2, mode="shared").build()], [running("r", [on("n", gpus={1: 300})])])
    placer = Placer(make_policy(policy, target=HALF_GPU_TARGET if policy == "fgd" else None))
    placement = placer.place_replica(snap, request(gpu=0.3))
    assert placement is not None and [g.index for g in placement.gpus] == [card]


def test_fgd_learns_its_target_from_observed_requests() -> None:
    fgd = FgdPolicy()
    assert fgd.shapes == []
    # nothing observed: bestfit's choice (n1, see above)
    assert chosen_node(fgd, two_shared_nodes()) == "n1"
    fgd.observe(request(gpu=0.5))
    assert fgd.shapes == [TargetShape(1000, 1024, 1, 500, (), 1.0)]
    # now it protects room for 0.5 jobs, as with a given target
    assert chosen_node(fgd, two_shared_nodes()) == "n2"


def test_fgd_refreshes_its_learned_target_every_learn_every_observations() -> None:
    fgd = FgdPolicy()
    fgd.observe(request(gpu=0.5))                       # observation 1 sets the target
    for _ in range(LEARN_EVERY - 1):                     # observations 2..200 are only recorded
        fgd.observe(request(gpu=0.25))
    assert [s.gpu_milli for s in fgd.shapes] == [500]
    fgd.observe(request(gpu=0.25))                      # observation 201: relearn from the window
    # 200 of 201 requests are 0.25: 200/201 = 0.995 >= 95 % coverage, so that shape alone is the target
    assert fgd.shapes == [TargetShape(1000, 1024, 1, 250, (), 1.0)]


def test_a_given_target_is_never_replaced_by_observations() -> None:
    fgd = FgdPolicy(target=HALF_GPU_TARGET)
    fgd.observe(request(gpu=1))
    assert fgd.shapes == HALF_GPU_TARGET


@pytest.mark.parametrize(("counts", "expected"), [
    # 19 x 0.5 + 1 x 0.3: 0.5 alone covers 19/20 = 95 % -> [0.5 with p = 1]
    ({500: 19, 300: 1}, [(500, 1.0)]),
    # 18 + 2: 18/20 = 90 % < 95 %, both kept, renormalised: 0.9 and 0.1
    ({500: 18, 300: 2}, [(500, 0.9), (300, 0.1)]),
    # equal counts: ties broken by the shape itself (smaller milli first)
    ({500: 2, 300: 2}, [(300, 0.5), (500, 0.5)]),
])
def test_the_learned_target_keeps_the_most_frequent_shapes(counts: dict[int, int],
                                                          expected: list[tuple[int, float]]) -> None:
    requests = [request(gpu=f"{milli}m") for milli, n in counts.items() for _ in range(n)]
    shapes = target_from_requests(requests)
    assert [(s.gpu_milli, round(s.probability, 6)) for s in shapes] == expected


def test_mig_and_memory_only_requests_are_not_target_shapes() -> None:
    assert target_from_requests([request(gpu={"mig": "1g.10gb"}), request(gpu={"memory": "10GiB"})]) == []


def test_random_is_seeded() -> None:
    snap = three_nodes()
    chosen = [Placer(make_policy("random", rng=random.Random(7))).place_replica(snap, ONE_GPU) for _ in range(2)]
    assert chosen[0] == chosen[1]


def test_policies_are_chosen_by_name_with_a_suggestion_for_typos() -> None:
    assert policy_names() == ["bestfit", "binpack", "fgd", "fgd-plain", "random", "spread"]
    with pytest.raises(ValidationError) as caught:
        SchedulerProfile(policy="bestfti")
    assert "unknown placement policy 'bestfti' (did you mean \"bestfit\"?)" in str(caught.value)
    with pytest.raises(ValidationError, match="min_runtime_s: must not be negative"):
        SchedulerProfile(min_runtime_s=-1)
