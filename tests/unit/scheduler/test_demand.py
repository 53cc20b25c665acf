"""One conversion of a request into milli-GPU: what quotas count before placement equals what the placement
takes when the pool has one card size, and is never more than it when card sizes differ."""

from __future__ import annotations

import pytest
from tests.builders import job, node, snapshot

from gpupool.domain.resources import memory_share_milli
from gpupool.scheduler.demand import workload_demand
from gpupool.scheduler.placement.registry import make_policy
from gpupool.scheduler.placer import Placer
from gpupool.scheduler.types import placements_usage


@pytest.mark.parametrize(("memory_mib", "card_mib", "milli"), [
    (40 * 1024, 80 * 1024, 500),   # 40 / 80 * 1000
    (10 * 1024, 80 * 1024, 125),   # 10 / 80 * 1000
    (10 * 1024, 24 * 1024, 417),   # ceil(10 / 24 * 1000) = ceil(416.7)
    (90 * 1024, 80 * 1024, 1000),  # more than the card: one card at most (it cannot be placed anyway)
])
def test_memory_share_milli(memory_mib: int, card_mib: int, milli: int) -> None:
    assert memory_share_milli(memory_mib, card_mib) == milli


@pytest.mark.parametrize("sizes", [("80GiB",), ("24GiB", "80GiB")])
def test_the_demand_before_placement_never_exceeds_the_placed_usage(sizes: tuple[str, ...]) -> None:
    pool = [node(f"n{i}").gpus(2, memory=size, mode="shared").build() for i, size in enumerate(sizes)]
    snap = snapshot(pool)
    w = job("w").replicas(2, gpu={"memory": "10GiB"}).build()
    demand = workload_demand(w, snap)
    # the largest card is 80 GiB: 2 x ceil(10 / 80 * 1000) = 2 x 125
    assert demand.gpu_milli == 250
    for policy in ("bestfit", "binpack", "spread"):
        result = Placer(make_policy(policy)).place_gang(snap, w)
        assert result.restore is not None
        placed = placements_usage(result.placements).gpu_milli
        result.restore()
        assert demand.gpu_milli <= placed
        if len(sizes) == 1:
            assert placed == demand.gpu_milli
