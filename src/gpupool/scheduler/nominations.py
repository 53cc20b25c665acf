"""Capacity of stopping workloads, promised to the preemptors that nominated it.

A preempted workload keeps its capacity until it has stopped, so a preemptor's nominated placement is
partly covered by its victims' capacity. A cycle holds only the uncovered remainder for the preemptor,
never the covered part twice: that would make later preemptors evict more than they need.
"""

from __future__ import annotations

from collections.abc import Iterable

from gpupool.scheduler.types import GpuAssignment, ReplicaPlacement, RunningWorkload


class StoppingCapacity:
    """What stopping workloads still hold per node and card, less what nominations already claimed."""

    def __init__(self, stopping: Iterable[RunningWorkload] = ()) -> None:
        self._cpu: dict[str, int] = {}
        self._memory: dict[str, int] = {}
        self._cards: dict[tuple[str, int], list[int]] = {}  # (node, card) -> [milli, memory]
        self._instances: set[tuple[str, int, int]] = set()
        for workload in stopping:
            self.add(workload)

    def add(self, workload: RunningWorkload) -> None:
        """Count a workload that has been asked to stop."""
        for p in workload.placements:
            self._cpu[p.node] = self._cpu.get(p.node, 0) + p.cpu_milli
            self._memory[p.node] = self._memory.get(p.node, 0) + p.memory_mib
            for g in p.gpus:
                card = self._cards.setdefault((p.node, g.index), [0, 0])
                card[0] += g.milli
                card[1] += g.memory_mib
                if g.mig_instance is not None:
                    self._instances.add((p.node, g.index, g.mig_instance))

    def claim(self, placements: Iterable[ReplicaPlacement]) -> list[ReplicaPlacement]:
        """Claim stopping capacity for a nomination; return the part it does not cover (to be held)."""
        remainder = []
        for p in placements:
            cpu = p.cpu_milli - self._take(self._cpu, p.node, p.cpu_milli)
            memory = p.memory_mib - self._take(self._memory, p.node, p.memory_mib)
            gpus = tuple(g for g in (self._claim_card(p.node, a) for a in p.gpus) if g is not None)
            if cpu or memory or gpus:
                remainder.append(ReplicaPlacement(p.node, cpu, memory, gpus, p.role, p.ordinal))
        return remainder

    def _claim_card(self, node: str, a: GpuAssignment) -> GpuAssignment | None:
        if a.mig_instance is not None:
            key = (node, a.index, a.mig_instance)
            if key in self._instances:
                self._instances.discard(key)
                return None
            return a
        card = self._cards.get((node, a.index), [0, 0])
        milli, memory = min(card[0], a.milli), min(card[1], a.memory_mib)
        card[0] -= milli
        card[1] -= memory
        if milli == a.milli and memory == a.memory_mib:
            return None
        return GpuAssignment(a.index, a.milli - milli, a.memory_mib - memory)

    @staticmethod
    def _take(pool: dict[str, int], node: str, amount: int) -> int:
        taken = min(pool.get(node, 0), amount)
        pool[node] = pool.get(node, 0) - taken
        return taken
