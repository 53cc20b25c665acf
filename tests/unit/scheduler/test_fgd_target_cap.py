"""FGD's target workload when CPU demand varies per request: the shape count is capped by rounding CPU."""

from __future__ import annotations

from gpupool.domain.resources import GpuRequest, ReplicaRequest
from gpupool.scheduler.placement.fragmentation import MAX_SHAPES, target_from_requests


def _half_gpu(cpu_milli: int) -> ReplicaRequest:
    return ReplicaRequest(cpu_milli, 1024, GpuRequest(share_milli=500))


def test_up_to_the_cap_every_cpu_demand_is_kept_as_asked() -> None:
    # MAX_SHAPES distinct CPU demands, one request each: 95 % coverage needs ceil(0.95 * 128) = 122 of
    # them, which is within the cap, so none is rounded: the most frequent-then-smallest 122 demands.
    demands = [1000 + 10 * i for i in range(MAX_SHAPES)]
    shapes = target_from_requests([_half_gpu(c) for c in demands])
    assert [s.cpu_milli for s in shapes] == demands[:122]


def test_above_the_cap_cpu_is_rounded_to_a_geometric_grid() -> None:
    # 300 distinct demands 1000..3990 milli: 95 % coverage needs 285 shapes > MAX_SHAPES, so CPU is rounded
    # to the nearest 2**(k / 8) milli. log2(1000) * 8 = 79.7 and log2(3990) * 8 = 95.8, so k runs 80..96:
    # at most 17 shapes, all on the grid, probabilities summing to 1 over the covered requests.
    shapes = target_from_requests([_half_gpu(1000 + 10 * i) for i in range(300)])
    grid = {round(2 ** (k / 8)) for k in range(80, 97)}
    assert 1 < len(shapes) <= 17
    assert {s.cpu_milli for s in shapes} <= grid
    assert abs(sum(s.probability for s in shapes) - 1.0) < 1e-9
    assert all(s.gpu_milli == 500 and s.memory_mib == 1024 for s in shapes)
