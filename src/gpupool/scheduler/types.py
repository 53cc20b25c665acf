"""What the scheduler reads: pending and running workloads, and the placements it hands out.

The placement types live in `gpupool.domain.placement` (the GPU layer, executors and store use them too);
they are re-exported here so the scheduler's imports stay as they are."""

from __future__ import annotations

from dataclasses import dataclass, field

from gpupool.domain.placement import GpuAssignment, ReplicaPlacement, placements_usage
from gpupool.domain.resources import ZERO, ReplicaRequest, ResourceVector

__all__ = ["GpuAssignment", "PendingWorkload", "ReplicaGroup", "ReplicaPlacement", "RunningWorkload", "ShapeKey",
           "placements_usage"]


@dataclass(frozen=True, slots=True)
class ReplicaGroup:
    """`count` identical replicas of one role (e.g. 4 workers, 1 chief)."""

    role: str
    count: int
    request: ReplicaRequest


@dataclass(frozen=True, slots=True)
class HeldReservation:
    """A reservation a previous cycle promised: start by `start_time` on `placements`. Pass it back on the
    PendingWorkload (from that cycle's `Reserve`) so that the next cycle keeps the promise. `hold`: a hold
    for a starving head (no start time can be promised; see `backfill.hold`)."""

    start_time: float
    placements: tuple[ReplicaPlacement, ...]
    hold: bool = False


def id_order(workload_id: str) -> tuple[int, str]:
    """The tie-break between workloads submitted at the same time: the shorter id first, then by text. The
    store's ids are integers written as text, so this is their numeric order ("9999" before "10130", which
    text order alone reverses: the tasks of a job array share one submit time)."""
    return (len(workload_id), workload_id)


class ShapeKey:
    """What identifies workloads whose requests are identical (`PendingWorkload.shape_key`): a value compared
    by its content, with its hash computed once (the scheduler looks it up several times per workload and
    cycle; a tuple would hash every request's fields again each time). `shape_key_of` hands out one object
    per value, so that most comparisons are of an object with itself."""

    __slots__ = ("_hash", "value")

    def __init__(self, value: tuple[object, ...]) -> None:
        self.value = value
        self._hash = hash(value)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        return isinstance(other, ShapeKey) and self._hash == other._hash and self.value == other.value

    def __repr__(self) -> str:
        return f"ShapeKey({self.value!r})"


# One ShapeKey per value while at most this many are kept (then they are dropped and made anew: equal keys made
# on both sides of a drop still compare equal, by content). A pool's distinct request shapes number in the tens.
_SHAPES_KEPT = 4096
_shapes: dict[tuple[object, ...], ShapeKey] = {}


def shape_key_of(value: tuple[object, ...]) -> ShapeKey:
    """The ShapeKey of `value`, the same object for equal values (see `_SHAPES_KEPT`). Thread-safe: two
    threads that make the same new key at once may each keep their own, which only compare by content."""
    key = _shapes.get(value)
    if key is None:
        if len(_shapes) >= _SHAPES_KEPT:
            _shapes.clear()
        key = _shapes.setdefault(value, ShapeKey(value))
    return key


@dataclass(frozen=True, slots=True)
class PendingWorkload:
    """A workload waiting to be scheduled.

    All replicas of all groups form one gang: at least `min_available` of them (default: all) are bound
    in one cycle or none. `nominated` is the placement a previous cycle preempted for (tried first).
    `max_runtime_s` (None: unbounded) lets backfill reason about when it would end. `reserved` is the
    reservation an earlier cycle made for it (kept, and served before other work, until it starts).
    `fair_share_preempted_by` holds the ids of the workloads of other queues that preempted it (for fair share
    or to reclaim a guarantee): it never preempts one of them for fair share in turn (see `preemption`).
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
    fair_share_preempted_by: frozenset[str] = frozenset()
    # derived from the groups once, when the workload is made (a cycle asks for them several times each)
    replica_count: int = field(init=False, repr=False, compare=False)
    _shape: ShapeKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        count = sum(g.count for g in self.groups)
        object.__setattr__(self, "replica_count", count)  # total replicas over all groups
        gang = self.min_available if self.min_available is not None else count
        shape = shape_key_of((tuple((g.role, g.count, g.request) for g in self.groups), gang))
        object.__setattr__(self, "_shape", shape)

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

    def shape_key(self) -> ShapeKey:
        """Identifies workloads whose requests are identical (for the scheduler's equivalence cache): equal for
        equal groups and gang size."""
        return self._shape


@dataclass(frozen=True, slots=True)
class RunningWorkload:
    """A workload holding resources: its placements, when it started, and whether it may be preempted.

    `terminating` marks a workload already asked to stop (not chosen again as a victim; still occupying).
    `usage` is the placements' summed usage: summed here unless a caller that has summed them passes it.
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
        if self.usage is ZERO:  # not given by a caller that summed the placements already (it must equal this)
            object.__setattr__(self, "usage", placements_usage(self.placements))

    def expected_end(self) -> float | None:
        """start_time + max_runtime_s, or None when it has no runtime bound."""
        return None if self.max_runtime_s is None else self.start_time + self.max_runtime_s
