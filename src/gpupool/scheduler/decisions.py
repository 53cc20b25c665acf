"""Decisions: what one scheduling cycle asks the world to do. Nothing here has effects."""

from __future__ import annotations

from dataclasses import dataclass, field

from gpupool.scheduler.types import ReplicaPlacement


@dataclass(frozen=True, slots=True)
class Bind:
    """Start `workload_id` with these exact placements (node, CPU, memory, GPU cards and shares)."""

    workload_id: str
    placements: tuple[ReplicaPlacement, ...]


@dataclass(frozen=True, slots=True)
class Preempt:
    """Stop `victim_id` so that `preemptor_id` can run; `reason` is recorded on the victim. `fair_share`: the
    victim was taken for fair share; `across_queues`: the victim is of another queue (taken for fair share or
    to reclaim a guarantee): requeued, it remembers the preemptor (see `PendingWorkload`)."""

    victim_id: str
    preemptor_id: str
    reason: str
    fair_share: bool = False
    across_queues: bool = False


@dataclass(frozen=True, slots=True)
class Reserve:
    """`workload_id` is the blocked head: it will start at `start_time` at the latest (if the running
    workloads keep their max_runtime) on these placements; backfill may not delay it. `hold`: the head has
    waited past the profile's `hold_after_s` for work without a max_runtime, so no time can be promised;
    these placements are held for it (no later work may start on them) until it starts, and `start_time`
    is when the hold was made."""

    workload_id: str
    start_time: float
    placements: tuple[ReplicaPlacement, ...]
    hold: bool = False


@dataclass(frozen=True, slots=True)
class Pending:
    """`workload_id` stays pending: the human `reason`, its 1-based `position` in its queue, and the
    placement nominated for it when it preempted others (to be tried first next cycle)."""

    workload_id: str
    reason: str
    position: int
    nominated: tuple[ReplicaPlacement, ...] | None = None


@dataclass(slots=True)
class Decisions:
    """Everything one cycle decided, in the order it decided it."""

    binds: list[Bind] = field(default_factory=list)
    preemptions: list[Preempt] = field(default_factory=list)
    reservations: list[Reserve] = field(default_factory=list)
    pending: list[Pending] = field(default_factory=list)

    def bound(self) -> dict[str, tuple[ReplicaPlacement, ...]]:
        """workload id -> placements of every bind."""
        return {b.workload_id: b.placements for b in self.binds}

    def pending_by_id(self) -> dict[str, Pending]:
        """workload id -> its Pending decision."""
        return {p.workload_id: p for p in self.pending}
