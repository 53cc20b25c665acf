"""What the scheduler reads: pending and running workloads, and the placements it hands out."""

from __future__ import annotations

from dataclasses import dataclass, field

from gpupool.domain.resources import ZERO, ReplicaRequest, ResourceVector


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


@dataclass(frozen=True, slots=True)
class ReplicaGroup:
    """`count` identical replicas of one role (e.g. 4 workers, 1 chief)."""

    role: str
    count: int
    request: ReplicaRequest


@dataclass(frozen=True, slots=True)
class HeldReservation:
    """A reservation a previous cycle promised: start by `start_time` on `placements`. Pass it back on the
    PendingWorkload (from that cycle's `Reserve`) so that the next cycle keeps the promise."""

    start_time: float
    placements: tuple[ReplicaPlacement, ...]


@dataclass(frozen=True, slots=True)
class PendingWorkload:
    """A workload waiting to be scheduled.

    All replicas of all groups form one gang: at least `min_available` of them (default: all) are bound
    in one cycle or none. `nominated` is the placement a previous cycle preempted for (tried first).
    `max_runtime_s` (None: unbounded) lets backfill reason about when it would end. `reserved` is the
    reservation an earlier cycle made for it (kept, and served before other work, until it starts).
    """

    id: str
    queue: str
    groups: tuple[ReplicaGroup, ...]
    priority: int = 0
    submit_time: float = 0.0
    min_available: int | None = None
    preemptible: bool = True
    max_runtime_s: float | None = None
    nominated: tuple[ReplicaPlacement, ...] | None = None
    reserved: HeldReservation | None = None

    @property
    def replica_count(self) -> int:
        """Total replicas over all groups."""
        return sum(g.count for g in self.groups)

    @property
    def gang_size(self) -> int:
        """How many replicas must be placed together (min_available, else all)."""
        return self.min_available if self.min_available is not None else self.replica_count

    def nominal(self, card_memory_mib: int | None = None) -> ResourceVector:
        """What the whole workload asks for. GPU shares sized by memory count `memory_share_milli` of a card
        of `card_memory_mib` (0 when not given: the scheduler passes the largest card they may use)."""
        total = ResourceVector()
        for g in self.groups:
            total = total + g.request.nominal(card_memory_mib).scaled(g.count)
        return total

    def shape_key(self) -> tuple[object, ...]:
        """Identifies workloads whose requests are identical (for the scheduler's equivalence cache)."""
        return (tuple((g.role, g.count, g.request) for g in self.groups), self.gang_size)


@dataclass(frozen=True, slots=True)
class RunningWorkload:
    """A workload holding resources: its placements, when it started, and whether it may be preempted.

    `terminating` marks a workload already asked to stop (not chosen again as a victim; still occupying).
    """

    id: str
    queue: str
    placements: tuple[ReplicaPlacement, ...]
    priority: int = 0
    start_time: float = 0.0
    preemptible: bool = True
    max_runtime_s: float | None = None
    terminating: bool = False
    usage: ResourceVector = field(default=ZERO, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "usage", placements_usage(self.placements))

    def expected_end(self) -> float | None:
        """start_time + max_runtime_s, or None when it has no runtime bound."""
        return None if self.max_runtime_s is None else self.start_time + self.max_runtime_s
