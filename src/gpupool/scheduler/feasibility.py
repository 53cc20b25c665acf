"""'Can never run': a request that would not fit even if every node of the pool were empty (greedy placement in
several orders first; a gang none of them places is refused only when an exact search proves that nothing fits)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import replace

from gpupool.domain.nodes import Node
from gpupool.domain.resources import ReplicaRequest, SharingMode, format_cpu, format_memory
from gpupool.scheduler.exact_fit import gang_fits_exactly
from gpupool.scheduler.gang import largest_first
from gpupool.scheduler.placement.filters import explain_no_fit
from gpupool.scheduler.placement.resource_fit import BestFitPolicy
from gpupool.scheduler.placer import Placer
from gpupool.scheduler.snapshot import ClusterSnapshot
from gpupool.scheduler.types import PendingWorkload, ShapeKey


class NeverFitsChecker:
    """Answers, per workload shape, whether it can never run on these nodes and why. Results are cached;
    build a new checker when the nodes change."""

    def __init__(self, nodes: Iterable[Node]) -> None:
        # cordoned nodes and unhealthy cards may come back: "never" looks at the hardware, not its state
        self._empty = ClusterSnapshot(_restored(n) for n in nodes)
        self._placer = Placer(BestFitPolicy(), gang_topology=True, avoid_gpu_nodes=False)
        self._cache: dict[object, str | None] = {}

    def reason(self, workload: PendingWorkload, shape: ShapeKey | None = None) -> str | None:
        """None when the workload fits an empty pool, else why it never can. `shape`: its `shape_key()`, when
        the caller has it already."""
        key = workload.shape_key() if shape is None else shape
        try:
            return self._cache[key]
        except KeyError:
            result = self._cache[key] = self._check(workload)
            return result

    def _check(self, workload: PendingWorkload) -> str | None:
        if len(self._empty) == 0:
            return "can never run: the pool has no nodes"
        # a role none of whose replicas fits anywhere is refused only when the gang cannot start without it
        unfit = [g for g in workload.groups if self._placer.place_replica(self._empty, g.request) is None]
        if unfit and sum(g.count for g in unfit) > workload.replica_count - workload.gang_size:
            return f"can never run: {self._why_not(unfit[0].request)}"
        for order in _orders(workload):
            result = self._placer.place_gang(self._empty, order, explain=False)
            if result.restore is not None:
                result.restore()
                return None
        if gang_fits_exactly(self._empty, workload) is not False:
            return None  # greedy placement missed an assignment that fits, or the search could not prove none
        return (f"can never run: the gang of {workload.gang_size} replicas does not fit the whole pool even "
                "when it is empty")

    def _why_not(self, request: ReplicaRequest) -> str:
        gpu = request.gpu
        nodes = self._empty.nodes
        if gpu.kind != "none" and not any(n.gpus for n in nodes):
            return "this pool has no GPUs"
        if gpu.kind == "whole":  # cards that can be given whole: healthy, not MIG-partitioned, an allowed model
            cards = [sum(1 for g in n.gpus if g.healthy and g.mode != SharingMode.MIG and gpu.allows_model(g.model))
                     for n in nodes]
            if max(cards) == 0:
                return ("no node has a GPU of model " + "|".join(gpu.models) if gpu.models
                        else "no node has a GPU that can be given whole (not MIG-partitioned)")
            if gpu.count > max(cards):
                return (f"a replica asks for {gpu.count} GPUs on one node, but the largest node has {max(cards)}"
                        f"{' of model ' + '|'.join(gpu.models) if gpu.models else ''}")
        biggest_cpu = max(n.cpu_milli for n in nodes)
        biggest_mem = max(n.memory_mib for n in nodes)
        if request.cpu_milli > biggest_cpu:
            return (f"a replica asks for {format_cpu(request.cpu_milli)} CPU; the largest node has "
                    f"{format_cpu(biggest_cpu)}")
        if request.memory_mib > biggest_mem:
            return (f"a replica asks for {format_memory(request.memory_mib)} of memory; the largest node has "
                    f"{format_memory(biggest_mem)}")
        detail = explain_no_fit(self._empty, request).split(": ", 1)[-1]
        return f"no node could hold one replica ({request.describe()}) even when empty: {detail}"


def _restored(node: Node) -> Node:
    if node.schedulable and all(g.healthy for g in node.gpus):
        return node  # already as the hardware allows (copying every node was most of building the checker)
    gpus = tuple(replace(g, healthy=True) for g in node.gpus)
    return replace(node, schedulable=True, gpus=gpus)


MAX_GROUP_ORDERS = 24  # every order of up to 4 roles; gangs with more roles are tried in the first 24 orders


def _orders(workload: PendingWorkload) -> Iterator[PendingWorkload]:
    """The workload with its groups in several orders: largest replicas first, as listed, then the other
    permutations (greedy gang placement depends on the order; "never" holds only when no order fits)."""
    first = largest_first(workload)
    yield first
    if len(workload.groups) < 2:
        return
    seen = {first.groups}
    for groups in itertools.islice(itertools.permutations(workload.groups), MAX_GROUP_ORDERS):
        if groups not in seen:
            seen.add(groups)
            yield replace(workload, groups=groups)
