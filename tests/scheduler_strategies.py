"""Hypothesis strategies for scheduler property tests: random pools, running sets, pending work, queues, profiles.

A drawn `Scenario` is always self-consistent: running work was placed on the pool by the placer, so the
snapshot holds it without over-commit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hypothesis import strategies as st
from tests.builders import node, queue, request, snapshot

from gpupool.domain.nodes import Node
from gpupool.domain.queues import QueueSpec
from gpupool.domain.resources import ReplicaRequest
from gpupool.scheduler.placement.registry import make_policy, policy_names
from gpupool.scheduler.placer import Placer
from gpupool.scheduler.profile import SchedulerProfile
from gpupool.scheduler.types import PendingWorkload, ReplicaGroup, RunningWorkload

QUEUES = ("a", "b", "c")
NOW = 1000.0


@dataclass(frozen=True)
class Scenario:
    """One scheduling cycle's inputs."""

    nodes: list[Node]
    running: list[RunningWorkload]
    pending: list[PendingWorkload]
    queues: dict[str, QueueSpec]
    profile: SchedulerProfile


@st.composite
def pool_nodes(draw: st.DrawFn) -> list[Node]:
    """1-5 nodes: CPU-only or with up to 4 cards (exclusive, shared or mps, sometimes two kinds), sometimes a
    MIG card, a rack label, a taint."""
    nodes = []
    for k in range(draw(st.integers(1, 5))):
        b = node(f"n{k}").cpu(draw(st.sampled_from([8, 16, 64]))).memory(draw(st.sampled_from(["32GiB", "256GiB"])))
        for _ in range(draw(st.sampled_from([0, 1, 1, 2]))):
            count = draw(st.integers(1, 3))
            b.gpus(count, draw(st.sampled_from(["A100", "V100"])), memory=draw(st.sampled_from(["16GiB", "80GiB"])),
                   mode=draw(st.sampled_from(["exclusive", "shared", "mps"])),
                   nvlink=draw(st.none() | st.just([j % 2 for j in range(count)])))
        if draw(st.integers(0, 2)) == 0:
            b.mig("A100", ["3g.40gb", "1g.10gb", "1g.10gb"])
        b.rack(draw(st.sampled_from(["r1", "r2"])))
        if draw(st.integers(0, 7)) == 0:
            b.taint("special")
        nodes.append(b.build())
    return nodes


@st.composite
def replica_requests(draw: st.DrawFn) -> ReplicaRequest:
    """CPU-only, whole cards, shares by compute or by memory, MIG instances; sometimes a model or a toleration."""
    gpu = draw(st.sampled_from([
        0, 0, 1, 1, 2, 3, 0.1, 0.25, 0.5, 0.7, {"memory": "10GiB"}, {"share": 0.3, "memory": "4GiB"},
        {"mig": "1g.10gb"}, {"count": 1, "model": "V100"}, {"count": 2, "model": ["A100"]},
        {"share": 0.5, "model": "A100"},
    ]))
    cpu, memory = draw(st.sampled_from(["500m", 1, 4, 8])), draw(st.sampled_from(["1GiB", "4GiB", "16GiB"]))
    base = request(cpu=cpu, memory=memory, gpu=gpu)
    tolerations = ("special",) if draw(st.integers(0, 3)) == 0 else ()
    return replace(base, tolerations=tolerations)


@st.composite
def pending_workloads(draw: st.DrawFn, ident: str) -> PendingWorkload:
    groups = tuple(ReplicaGroup(f"role{g}", draw(st.integers(1, 3)), draw(replica_requests()))
                   for g in range(draw(st.integers(1, 2))))
    total = sum(g.count for g in groups)
    min_available = draw(st.none() | st.integers(1, total))
    return PendingWorkload(
        id=ident, queue=draw(st.sampled_from(QUEUES)), groups=groups, priority=draw(st.integers(0, 3)),
        submit_time=draw(st.integers(0, 999)), min_available=min_available, preemptible=draw(st.booleans()),
        max_runtime_s=draw(st.none() | st.sampled_from([50.0, 500.0, 5000.0])),
    )


@st.composite
def queue_specs(draw: st.DrawFn) -> dict[str, QueueSpec]:
    specs = {}
    for name in QUEUES:
        guaranteed = draw(st.sampled_from([0, 0.5, 1, 2, 4]))
        limit = draw(st.none() | st.sampled_from([0, 1, 3, 8]))
        specs[name] = queue(name, guaranteed, None if limit is None else guaranteed + limit,
                            weight=draw(st.sampled_from([1.0, 2.0])), lend=draw(st.booleans()),
                            strict_fifo=draw(st.integers(0, 3)) == 0)
    return specs


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """A pool, running work placed on it by the placer, pending work (some nominated), queues and a profile."""
    nodes = draw(pool_nodes())
    snap = snapshot(nodes)
    placer = Placer(make_policy("bestfit"), avoid_gpu_nodes=False)
    running = []
    for k in range(draw(st.integers(0, 12))):
        shape = draw(pending_workloads(f"r{k}"))
        placed = placer.place_gang(snap, shape)
        if placed.ok:
            running.append(RunningWorkload(
                shape.id, shape.queue, placed.placements, shape.priority, start_time=draw(st.integers(0, 999)),
                preemptible=shape.preemptible, max_runtime_s=shape.max_runtime_s,
                terminating=draw(st.integers(0, 5)) == 0))
    pending = [draw(pending_workloads(f"p{k}")) for k in range(draw(st.integers(1, 8)))]
    empty = snapshot(nodes)
    for k, w in enumerate(pending):
        if draw(st.integers(0, 4)) == 0:  # a nomination from an earlier cycle (may or may not still fit)
            result = placer.place_gang(empty, w)
            if result.ok:
                pending[k] = replace(w, nominated=result.placements)
    profile = SchedulerProfile(policy=draw(st.sampled_from(policy_names())), gang_topology=draw(st.booleans()),
                               cpu_avoids_gpu_nodes=draw(st.booleans()), preemption=draw(st.booleans()),
                               backfill=draw(st.booleans()), min_runtime_s=draw(st.sampled_from([0.0, 60.0, 600.0])))
    return Scenario(nodes, running, pending, draw(queue_specs()), profile)
