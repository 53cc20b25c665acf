"""SchedulerProfile: the knobs of one scheduler configuration."""

from __future__ import annotations

from dataclasses import dataclass

from gpupool.domain.errors import ValidationError
from gpupool.scheduler.placement.registry import POLICIES, make_policy


@dataclass(frozen=True, slots=True)
class SchedulerProfile:
    """How the scheduler places and orders work.

    - `policy`: placement policy name (binpack, spread, bestfit, fgd, random).
    - `gang_topology`: multi-replica gangs prefer fewest nodes, then one rack.
    - `cpu_avoids_gpu_nodes`: CPU-only replicas use GPU nodes only when no CPU-only node fits.
    - `preemption`, `backfill`: switch those mechanisms on or off.
    - `min_runtime_s`: a workload runs at least this long before it may be preempted.
    - `max_preemptions_per_cycle`: at most this many victims are chosen in one cycle (the rest of the
      preemptors wait for the next cycle). 64 keeps a cycle on a 1,000-node pool under 2 s even when
      thousands of higher-priority workloads arrive at once (benchmarks/scheduler), while one cycle can
      still free eight full 8-GPU nodes of 1-GPU work.
    - `reservation_depth`: how many blocked heads may hold a backfill reservation at once (Slurm's
      backfill depth). 8: a reservation costs a snapshot copy and a walk over the running work; eight
      covers one blocked head per queue in the pools we size for, and more only delays backfill.
    - `fair_share_preemption`: a queue below its weighted fair share may preempt work of a queue above
      it (off by default; see docs/scheduler.md).
    - `hold_after_s`: a blocked head that has waited this long and can get no reservation (the work it
      waits for has no max_runtime) holds the capacity it needs: no later work starts on it, so it starts
      once the work there ends (one hold at a time; None: never; see docs/scheduler.md, "Holds").
      1,800 s: holding drains cards, idle while the work still on them ends, so it is for heads that
      waited far longer than the rest; half an hour is long against a cycle and short against the hours
      a gang can otherwise wait behind a stream of smaller work (benchmarks/scheduler/README.md, "Holds").
    """

    policy: str = "fgd"
    gang_topology: bool = True
    cpu_avoids_gpu_nodes: bool = True
    preemption: bool = True
    backfill: bool = True
    min_runtime_s: float = 60.0
    max_preemptions_per_cycle: int = 64
    reservation_depth: int = 8
    fair_share_preemption: bool = False
    hold_after_s: float | None = 1800.0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            make_policy(self.policy)  # raises the "unknown policy" error with a suggestion
        if self.min_runtime_s < 0:
            raise ValidationError("must not be negative", "min_runtime_s")
        if self.max_preemptions_per_cycle < 0:
            raise ValidationError("must not be negative (0 turns preemption off)", "max_preemptions_per_cycle")
        if self.hold_after_s is not None and self.hold_after_s < 0:
            raise ValidationError("must not be negative (leave it unset to never hold)", "hold_after_s")
        if self.reservation_depth < 0:
            raise ValidationError("must not be negative (0 makes no reservation)", "reservation_depth")
