"""Builders for scheduler tests: `node("n1").gpus(8, "A100").build()`, `job("j1").gpu(1).build()`,
`running("r1", [on("n1", gpus={0: 1000})])`, and `cycle(nodes, pending, runs)` for one scheduling cycle."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpupool.domain.nodes import RACK_LABEL, Gpu, MigInstance, Node, Taint
from gpupool.domain.queues import UNLIMITED, QueueSpec
from gpupool.domain.resources import (
    MILLI_PER_GPU,
    ReplicaRequest,
    ResourceVector,
    SharingMode,
    parse_cpu,
    parse_gpu,
    parse_memory,
)
from gpupool.scheduler.cycle import run_cycle
from gpupool.scheduler.decisions import Decisions
from gpupool.scheduler.profile import SchedulerProfile
from gpupool.scheduler.snapshot import ClusterSnapshot
from gpupool.scheduler.types import (
    GpuAssignment,
    PendingWorkload,
    ReplicaGroup,
    ReplicaPlacement,
    RunningWorkload,
)


@dataclass
class NodeBuilder:
    name: str
    cpu_milli: int = 64_000
    memory_mib: int = 256 * 1024
    cards: list[Gpu] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[Taint] = field(default_factory=list)
    schedulable: bool = True

    def cpu(self, cores: Any) -> NodeBuilder:
        self.cpu_milli = parse_cpu(cores)
        return self

    def memory(self, size: str) -> NodeBuilder:
        self.memory_mib = parse_memory(size)
        return self

    def gpus(self, count: int, model: str = "A100", memory: str = "80GiB", mode: str = "exclusive",
             nvlink: list[int] | None = None) -> NodeBuilder:
        start = len(self.cards)
        for k in range(count):
            group = nvlink[k] if nvlink else None
            self.cards.append(Gpu(start + k, model, parse_memory(memory), SharingMode(mode), nvlink_group=group))
        return self

    def mig(self, model: str, profiles: list[str], memory: str = "80GiB") -> NodeBuilder:
        instances = tuple(MigInstance(p, f"MIG-{self.name}-{len(self.cards)}-{k}") for k, p in enumerate(profiles))
        self.cards.append(Gpu(len(self.cards), model, parse_memory(memory), SharingMode.MIG,
                              mig_instances=instances))
        return self

    def rack(self, rack: str) -> NodeBuilder:
        self.labels[RACK_LABEL] = rack
        return self

    def label(self, key: str, value: str) -> NodeBuilder:
        self.labels[key] = value
        return self

    def taint(self, key: str) -> NodeBuilder:
        self.taints.append(Taint(key))
        return self

    def cordoned(self) -> NodeBuilder:
        self.schedulable = False
        return self

    def build(self) -> Node:
        return Node(self.name, self.cpu_milli, self.memory_mib, tuple(self.cards), self.labels, tuple(self.taints),
                    self.schedulable)


def node(name: str) -> NodeBuilder:
    return NodeBuilder(name)


def request(cpu: Any = 1, memory: str = "1GiB", gpu: Any = 0) -> ReplicaRequest:
    return ReplicaRequest(parse_cpu(cpu), parse_memory(memory), parse_gpu(gpu))


@dataclass
class JobBuilder:
    id: str
    queue_name: str = "default"
    prio: int = 0
    submitted: float = 0.0
    groups: list[ReplicaGroup] = field(default_factory=list)
    min_avail: int | None = None
    can_preempt: bool = True
    runtime: float | None = None
    nominee: tuple[ReplicaPlacement, ...] | None = None

    def queue(self, name: str) -> JobBuilder:
        self.queue_name = name
        return self

    def priority(self, value: int) -> JobBuilder:
        self.prio = value
        return self

    def at(self, t: float) -> JobBuilder:
        self.submitted = t
        return self

    def replicas(self, count: int, cpu: Any = 1, memory: str = "1GiB", gpu: Any = 0, role: str = "worker",
                 **req: Any) -> JobBuilder:
        r = request(cpu, memory, gpu)
        if req:
            r = ReplicaRequest(r.cpu_milli, r.memory_mib, r.gpu, **req)
        self.groups.append(ReplicaGroup(role, count, r))
        return self

    def gpu(self, amount: Any, cpu: Any = 1, memory: str = "1GiB") -> JobBuilder:
        return self.replicas(1, cpu, memory, amount)

    def min_available(self, n: int) -> JobBuilder:
        self.min_avail = n
        return self

    def not_preemptible(self) -> JobBuilder:
        self.can_preempt = False
        return self

    def max_runtime(self, seconds: float) -> JobBuilder:
        self.runtime = seconds
        return self

    def nominated(self, *placements: ReplicaPlacement) -> JobBuilder:
        self.nominee = placements
        return self

    def build(self) -> PendingWorkload:
        groups = tuple(self.groups) or (ReplicaGroup("worker", 1, request()),)
        return PendingWorkload(self.id, self.queue_name, groups, self.prio, self.submitted, self.min_avail,
                               self.can_preempt, self.runtime, self.nominee)


def job(workload_id: str) -> JobBuilder:
    return JobBuilder(workload_id)


def running(workload_id: str, placements: list[ReplicaPlacement], queue: str = "default", priority: int = 0,
            start: float = 0.0, preemptible: bool = True, max_runtime: float | None = None,
            terminating: bool = False) -> RunningWorkload:
    return RunningWorkload(workload_id, queue, tuple(placements), priority, start, preemptible, max_runtime,
                           terminating)


def on(node_name: str, cpu: Any = 1, memory: str = "1GiB", gpus: dict[int, int] | None = None,
       gpu_memory: dict[int, str] | None = None) -> ReplicaPlacement:
    """A replica placement on `node_name` taking `gpus` {card index: milli} and `gpu_memory` {card index: size}
    of those cards' memory (none unless given)."""
    sizes = gpu_memory or {}
    cards = tuple(GpuAssignment(i, m, parse_memory(sizes.get(i, 0))) for i, m in sorted((gpus or {}).items()))
    return ReplicaPlacement(node_name, parse_cpu(cpu), parse_memory(memory), cards)


def snapshot(nodes: Sequence[Node], runs: Sequence[RunningWorkload] = ()) -> ClusterSnapshot:
    snap = ClusterSnapshot(nodes)
    for r in runs:
        snap.assume_all(r.placements)
    return snap


def snapshot_state(snap: ClusterSnapshot) -> dict[str, Any]:
    """Every capacity array of `snap` (as lists) and its MIG bookkeeping, for exact before/after comparison;
    version stamps are left out (they change with every change, even one that is undone)."""
    arrays = {k: v for k, v in vars(snap).items() if isinstance(v, np.ndarray) and k != "version"}
    state: dict[str, Any] = {k: v.tolist() for k, v in arrays.items()}
    state["mig"] = {k: list(v) for k, v in snap._mig_used.items()}
    return state


def queue(name: str, guaranteed_gpu: float = 0, limit_gpu: float | None = None, weight: float = 1.0,
          lend: bool = True, strict_fifo: bool = False) -> QueueSpec:
    """A queue whose guarantee and limit name GPUs only (CPU and memory unlimited, as `parse_queue` reads
    `{guaranteed: {gpu: 2}, limit: {gpu: 4}}`)."""
    limit = None if limit_gpu is None else ResourceVector(UNLIMITED, UNLIMITED, round(limit_gpu * MILLI_PER_GPU))
    return QueueSpec(name, ResourceVector(0, 0, round(guaranteed_gpu * MILLI_PER_GPU)), limit, weight, lend,
                     strict_fifo)


def cycle(nodes: Sequence[Node], pending: Sequence[PendingWorkload], runs: Sequence[RunningWorkload] = (),
          queues: Sequence[QueueSpec] = (), now: float = 1000.0, **profile: Any) -> Decisions:
    """One scheduling cycle on `nodes` holding `runs`; `profile` sets SchedulerProfile fields (policy=...)."""
    return run_cycle(snapshot(nodes, list(runs)), pending, runs, {q.name: q for q in queues},
                     SchedulerProfile(**profile), now)
