"""FGD's target workload with GPU model constraints: which requests may use which nodes."""

from __future__ import annotations

import numpy as np
from tests.builders import node, request, snapshot

from gpupool.domain.resources import GpuRequest, ReplicaRequest
from gpupool.scheduler.placement.fragmentation import TargetArrays, TargetShape, target_from_requests
from gpupool.scheduler.placement.registry import make_policy
from gpupool.scheduler.placer import Placer


def _gpu(milli: int, *models: str) -> ReplicaRequest:
    return ReplicaRequest(1000, 1024, GpuRequest(share_milli=milli, models=models))


def test_coverage_counts_shapes_and_keeps_every_model_list_of_a_covered_shape() -> None:
    # 12 x 0.3 GPU (any model) and 8 x 0.5 GPU, each naming another model. As (shape, models) pairs the
    # 0.5 requests are 8 singletons and 95 % coverage (19 of 20) would drop one of them; as shapes, 0.3
    # covers 12/20 and 0.5 the other 8/20: both kept, 0.5 with all 8 model lists at 1/20 each.
    models = [f"M{k}" for k in range(8)]
    requests = [_gpu(300)] * 12 + [_gpu(500, m) for m in models]
    shapes = target_from_requests(requests)
    assert shapes[0] == TargetShape(1000, 1024, 1, 300, (), 0.6)
    assert sorted(s.models for s in shapes[1:]) == [(m,) for m in models]
    assert all(s.gpu_milli == 500 and s.probability == 0.05 for s in shapes[1:])


def test_a_shape_counts_on_a_node_only_for_the_requests_that_accept_its_model() -> None:
    snap = snapshot([node("v").gpus(2, "V100").build(), node("t").gpus(2, "T4").build(),
                     node("cpu").build()])
    shapes = [TargetShape(1000, 1024, 1, 1000, ("V100",), 0.3), TargetShape(1000, 1024, 1, 1000, (), 0.5),
              TargetShape(1000, 1024, 0, 0, (), 0.2)]
    target = TargetArrays(shapes, snap)
    # two shapes: 1 GPU (0.3 V100-only + 0.5 any = 0.8) and CPU-only (0.2). On v all 0.8 of the 1-GPU
    # shape may run; on t only the 0.5 that names no model; CPU-only shapes and the CPU node count nothing.
    np.testing.assert_allclose(target.prob, [0.8, 0.2])
    weight = {n.name: target.weight[i].tolist() for i, n in enumerate(snap.nodes)}
    assert weight == {"v": [0.8, 0.0], "t": [0.5, 0.0], "cpu": [0.0, 0.0]}
    assert len(set(target.klass.tolist())) == 3


def test_fgd_keeps_the_cards_that_constrained_requests_need() -> None:
    snap = snapshot([node("a").gpus(2, "V100", mode="shared").build(),
                     node("b").gpus(2, "T4", mode="shared").build()])
    # target: half the 1-GPU requests accept only V100, half any model. Placing one unconstrained GPU:
    #   on a (V100): both halves still run there before and after, no card is partly used: growth 0;
    #   on b (T4): the V100-only half cannot run there, so all idle GPU is fragment for it:
    #         F before 0.5 * 2000 = 1000, after 0.5 * 1000 = 500: growth -500  -> b
    fgd = make_policy("fgd", target=[TargetShape(1000, 1024, 1, 1000, ("V100",), 0.5),
                                     TargetShape(1000, 1024, 1, 1000, (), 0.5)])
    placement = Placer(fgd).place_replica(snap, request(gpu=1))
    assert placement is not None and placement.node == "b"
    # without the constrained half (every request accepts any model) both nodes grow by 0 and bestfit's
    # tie-break on equal nodes keeps node order                                        -> a
    plain = make_policy("fgd", target=[TargetShape(1000, 1024, 1, 1000, (), 1.0)])
    placement = Placer(plain).place_replica(snap, request(gpu=1))
    assert placement is not None and placement.node == "a"
