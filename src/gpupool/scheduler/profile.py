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
    """

    policy: str = "fgd"
    gang_topology: bool = True
    cpu_avoids_gpu_nodes: bool = True
    preemption: bool = True
    backfill: bool = True
    min_runtime_s: float = 60.0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            make_policy(self.policy)  # raises the "unknown policy" error with a suggestion
        if self.min_runtime_s < 0:
            raise ValidationError("must not be negative", "min_runtime_s")
