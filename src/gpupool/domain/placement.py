"""Placements: where a replica runs and which GPUs (or GPU shares, MIG instances) it was given.

The scheduler hands these out; the GPU layer, the executors and the store read them.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpupool.domain.resources import ResourceVector


@dataclass(frozen=True, slots=True)
class GpuAssignment:
    """One GPU (or MIG instance) given to a replica: the node-local card `index`, the milli and GPU memory
    taken from it, and for MIG the position of the instance in the card's `mig_instances`."""

    index: int
    milli: int
    memory_mib: int = 0
    mig_instance: int | None = None


@dataclass(frozen=True, slots=True)
class ReplicaPlacement:
    """Where one replica runs: a node, the CPU and memory it takes there, and its GPUs."""

    node: str
    cpu_milli: int
    memory_mib: int
    gpus: tuple[GpuAssignment, ...] = ()
    role: str = "worker"
    ordinal: int = 0

    def usage(self) -> ResourceVector:
        """CPU, memory and GPU milli this replica takes."""
        return ResourceVector(self.cpu_milli, self.memory_mib, sum(g.milli for g in self.gpus))


def placements_usage(placements: tuple[ReplicaPlacement, ...]) -> ResourceVector:
    """Sum of the usage of several replica placements."""
    total = ResourceVector()
    for p in placements:
        total = total + p.usage()
    return total
