"""Exact gang fit: does any assignment of a gang's replicas to nodes and cards fit a snapshot?

The placer is greedy: it puts one replica after another where its policy scores best, and a gang it cannot
place that way may still fit (two cards, shares of 0.4, 0.4, 0.3, 0.3, 0.3 and 0.3: best fit puts both 0.4
on one card and strands 0.2 there). "Can never run" must hold for every assignment, so before saying it the
checker asks this search, which tries every node and every distinct choice of cards for each replica.

The search counts nodes in equal states once (same hardware, same free capacity) and remembers the pool
states it has already refuted, so pools of many identical nodes stay cheap; it gives up after a bounded
number of trial placements, and then says nothing (never "does not fit" without a proof).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator

import numpy as np

from gpupool.domain.resources import MILLI_PER_GPU, ReplicaRequest
from gpupool.scheduler.placement.cards import choose_mig_instances
from gpupool.scheduler.placement.filters import feasible_mask, gpu_model_mask, share_terms
from gpupool.scheduler.snapshot import ClusterSnapshot
from gpupool.scheduler.types import GpuAssignment, PendingWorkload, ReplicaPlacement

MAX_TRIALS = 5_000  # trial placements before the search gives up (a refuted gang of 8 on 8 node kinds: ~200)


def gang_fits_exactly(snap: ClusterSnapshot, workload: PendingWorkload, max_trials: int = MAX_TRIALS) -> bool | None:
    """True when some placement of at least `gang_size` of the workload's replicas fits `snap` now, False
    when none does, None when the search gave up after `max_trials` trial placements. `snap` is left as it
    was."""
    requests = [g.request for g in workload.groups for _ in range(g.count)]
    requests.sort(key=lambda r: (r.gpu.nominal_milli(), r.cpu_milli, r.memory_mib), reverse=True)
    return _Search(snap, requests, workload.gang_size, max_trials).run()


class _Search:
    def __init__(self, snap: ClusterSnapshot, requests: list[ReplicaRequest], gang_size: int, max_trials: int) -> None:
        self.snap, self.requests, self.gang_size = snap, requests, gang_size
        self.trials_left = max_trials
        self.refuted: set[object] = set()
        self.hardware = [_hardware(snap, row) for row in range(len(snap))]

    def run(self) -> bool | None:
        try:
            return self._fits(0, 0)
        except _GaveUpError:
            return None

    def _fits(self, k: int, skipped: int) -> bool:
        if k - skipped >= self.gang_size:
            return True
        if k == len(self.requests):
            return False
        key = (k, skipped, self._state())
        if key in self.refuted:
            return False
        for placement in self._candidates(self.requests[k]):
            self.trials_left -= 1
            if self.trials_left < 0:
                raise _GaveUpError
            self.snap.assume(placement)
            try:
                if self._fits(k + 1, skipped):
                    return True
            finally:
                self.snap.forget(placement)
        if skipped < len(self.requests) - self.gang_size and self._fits(k + 1, skipped + 1):
            return True
        self.refuted.add(key)
        return False

    def _state(self) -> frozenset[tuple[object, int]]:
        """The pool's state up to the order of nodes with equal hardware: how many nodes are in each state."""
        return frozenset(Counter((self.hardware[row], self._free(row)) for row in range(len(self.snap))).items())

    def _free(self, row: int) -> tuple[object, ...]:
        snap = self.snap
        mig = tuple(tuple(used) for (r, _), used in sorted(snap._mig_used.items()) if r == row)
        return (int(snap.free_cpu[row]), int(snap.free_mem[row]), tuple(snap.free_milli[row].tolist()),
                tuple(snap.free_gmem[row].tolist()), mig)

    def _candidates(self, request: ReplicaRequest) -> Iterator[ReplicaPlacement]:
        """Every distinct placement of one replica: one node per node state, one card choice per kind."""
        seen: set[object] = set()
        for row in feasible_mask(self.snap, request, False).nonzero()[0].tolist():
            node_key = (self.hardware[row], self._free(row))
            if node_key in seen:
                continue
            seen.add(node_key)
            for gpus in self._card_choices(row, request):
                placement = ReplicaPlacement(self.snap.nodes[row].name, request.cpu_milli, request.memory_mib, gpus)
                if self.snap.fits(placement):
                    yield placement

    def _card_choices(self, row: int, request: ReplicaRequest) -> Iterator[tuple[GpuAssignment, ...]]:
        snap, gpu = self.snap, request.gpu
        kinds: set[object] = set()
        if gpu.kind == "none":
            yield ()
        elif gpu.kind == "mig":  # instances of one profile are interchangeable: each takes only itself
            instances = choose_mig_instances(snap, row, gpu)
            if instances is not None:
                yield instances
        elif gpu.kind == "whole":
            usable = snap.whole_free_cards(row) & gpu_model_mask(snap, gpu)[row]
            columns = [j for j in range(int(snap.gpu_count[row])) if usable[j]]
            for chosen in itertools.combinations(columns, gpu.count):
                kind = tuple(sorted(self._card_kind(row, j) for j in chosen))
                if kind not in kinds:
                    kinds.add(kind)
                    yield tuple(snap.gpu_assignment(row, j, MILLI_PER_GPU, int(snap.gpu_mem_total[row, j]))
                                for j in chosen)
        else:
            terms = share_terms(snap, gpu, np.array([row]))
            for j in terms.fits[0].nonzero()[0].tolist():
                share_kind = (self._card_kind(row, j), int(snap.free_milli[row, j]), int(snap.free_gmem[row, j]))
                if share_kind not in kinds:
                    kinds.add(share_kind)
                    yield (snap.gpu_assignment(row, j, int(terms.milli[0, j]), int(terms.memory[0, j])),)

    def _card_kind(self, row: int, column: int) -> tuple[object, ...]:
        card = self.snap.nodes[row].gpus[column]
        return (card.model, card.memory_mib, str(card.mode), card.healthy)


class _GaveUpError(Exception):
    pass


def _hardware(snap: ClusterSnapshot, row: int) -> tuple[object, ...]:
    """What makes two nodes interchangeable for placement: capacity, cards, labels, taints, schedulability."""
    node = snap.nodes[row]
    cards = tuple((g.model, g.memory_mib, str(g.mode), g.healthy, g.nvlink_group,
                   tuple(i.profile for i in g.mig_instances)) for g in node.gpus)
    return (node.cpu_milli, node.memory_mib, cards, tuple(sorted(node.labels.items())),
            tuple(sorted(str(t) for t in node.taints)), node.schedulable)
