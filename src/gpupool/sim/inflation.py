"""The "inflation" experiment of the FGD paper (Weng et al., USENIX ATC 2023, section 6).

1. Cluster capacity C = 1000 milli per GPU.
2. Sample pods uniformly with replacement, appending until the GPU requested in all (num_gpu x gpu_milli
   summed) would pass `inflation` x C (130%), then shuffle the list (one seeded generator does both).
3. Place pods one at a time in that order with the scheduler's placer; nothing leaves; a pod that does not
   fit is dropped, never retried.
4. After each pod: arrived% = GPU milli requested so far (placed or not) / C; allocated% = GPU milli placed / C.
5. Headline: unallocated% = 100 - allocated% at the first pod where arrived% reaches 100%.
6. Fragmentation (the FGD measure against the target workload) at the first pod where arrived% reaches 90%:
   F / C and F / idle GPU milli.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gpupool.domain.nodes import Node
from gpupool.scheduler.placement.fragmentation import TargetShape, cluster_fragmentation, target_from_requests
from gpupool.scheduler.placement.registry import make_policy
from gpupool.scheduler.placer import Placer
from gpupool.scheduler.snapshot import ClusterSnapshot
from gpupool.scheduler.types import ReplicaPlacement
from gpupool.sim.traces.openb import TracePod

CHECKPOINTS = (100.0, 110.0, 130.0)
FRAGMENTATION_AT = 90.0


@dataclass(frozen=True, slots=True)
class PlacementRecord:
    """One sampled pod in placement order: its trace name and where it went (None: dropped)."""

    seq: int
    pod: str
    placement: ReplicaPlacement | None


@dataclass
class InflationResult:
    """The curve (arrived%, allocated% after each pod), the headline figures and the placements."""

    policy: str
    seed: int
    capacity_milli: int
    arrived_pct: list[float] = field(default_factory=list)
    allocated_pct: list[float] = field(default_factory=list)
    records: list[PlacementRecord] = field(default_factory=list)
    fragmentation_pct_of_capacity: float | None = None
    fragmentation_pct_of_idle: float | None = None

    def unallocated_at(self, arrived: float) -> float | None:
        """See `unallocated_at` (the module function)."""
        return unallocated_at(self.arrived_pct, self.allocated_pct, arrived)

    def summary(self) -> dict[str, float | int | str | None]:
        """The figures of one run as a flat dict (for JSON and tables)."""
        out: dict[str, float | int | str | None] = {"policy": self.policy, "seed": self.seed,
                                                    "pods": len(self.records),
                                                    "placed": sum(r.placement is not None for r in self.records)}
        for point in CHECKPOINTS:
            out[f"unallocated_pct@{point:g}"] = self.unallocated_at(point)
        out["frag_pct_of_capacity@90"] = self.fragmentation_pct_of_capacity
        out["frag_pct_of_idle@90"] = self.fragmentation_pct_of_idle
        return out


def unallocated_at(arrived_pct: Sequence[float], allocated_pct: Sequence[float], arrived: float) -> float | None:
    """100 - allocated% at the first pod where arrived% >= `arrived`. The sampling stops just short of the
    inflation target, so a point within 1% past the last pod reads the last pod's value; None beyond that."""
    index = bisect.bisect_left(arrived_pct, arrived - 1e-9)
    if index < len(arrived_pct):
        return 100.0 - allocated_pct[index]
    if arrived_pct and arrived <= arrived_pct[-1] + 1.0:
        return 100.0 - allocated_pct[-1]
    return None


def sample_pods(pods: Sequence[TracePod], capacity_milli: int, rng: random.Random,
                inflation: float = 1.3) -> list[TracePod]:
    """Step 2: sample with replacement until the next pod would pass `inflation` x capacity; shuffle."""
    if not any(p.gpu_total_milli for p in pods):
        raise ValueError("the pod list has no GPU pods; the inflation experiment needs some")
    budget = inflation * capacity_milli
    sampled: list[TracePod] = []
    total = 0
    while True:
        pod = pods[rng.randrange(len(pods))]
        if total + pod.gpu_total_milli > budget:
            break
        sampled.append(pod)
        total += pod.gpu_total_milli
    rng.shuffle(sampled)
    return sampled


def default_target(pods: Sequence[TracePod]) -> list[TargetShape]:
    """The FGD target workload of a pod list: its most frequent shapes covering 95% of pods."""
    return target_from_requests(p.request() for p in pods)


def run_inflation(nodes: Sequence[Node], pods: Sequence[TracePod], policy: str, seed: int,
                  inflation: float = 1.3, target: Sequence[TargetShape] | None = None,
                  progress: Callable[[int, int], None] | None = None) -> InflationResult:
    """Steps 1-6 for one policy and seed. `target` defaults to `default_target(pods)`; `progress` is called
    with (pods done, pods in all) every 1000 pods."""
    capacity = 1000 * sum(len(n.gpus) for n in nodes)
    rng = random.Random(seed)
    sampled = sample_pods(pods, capacity, rng, inflation)
    shapes = list(target) if target is not None else default_target(pods)
    return place_in_order(nodes, sampled, policy, seed, shapes, progress)


def place_in_order(nodes: Sequence[Node], sampled: Sequence[TracePod], policy: str, seed: int,
                   target: Sequence[TargetShape], progress: Callable[[int, int], None] | None = None
                   ) -> InflationResult:
    """Steps 3-6: place `sampled` one at a time in order with `policy` (seeded with `seed`), record the
    curve, and measure fragmentation against `target` when arrived% first reaches 90%."""
    snap = ClusterSnapshot(nodes)
    capacity = int(snap.cap_gpu.sum())
    placer = Placer(make_policy(policy, random.Random(seed), target), gang_topology=False, avoid_gpu_nodes=True)
    result = InflationResult(policy, seed, capacity)
    arrived = allocated = 0
    for seq, pod in enumerate(sampled):
        placement = placer.place_replica(snap, pod.request())
        if placement is not None:
            snap.assume(placement)
            allocated += pod.gpu_total_milli
        arrived += pod.gpu_total_milli
        result.records.append(PlacementRecord(seq, pod.name, placement))
        result.arrived_pct.append(100.0 * arrived / capacity)
        result.allocated_pct.append(100.0 * allocated / capacity)
        if result.fragmentation_pct_of_capacity is None and result.arrived_pct[-1] >= FRAGMENTATION_AT:
            _record_fragmentation(result, snap, target, capacity - allocated)
        if progress is not None and (seq + 1) % 1000 == 0:
            progress(seq + 1, len(sampled))
    return result


def _record_fragmentation(result: InflationResult, snap: ClusterSnapshot, shapes: Sequence[TargetShape],
                          idle: int) -> None:
    fragment = cluster_fragmentation(snap, shapes)
    result.fragmentation_pct_of_capacity = 100.0 * fragment / result.capacity_milli
    result.fragmentation_pct_of_idle = 100.0 * fragment / idle if idle else 0.0
