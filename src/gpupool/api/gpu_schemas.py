"""API types of the GPU layer: per-GPU admin changes (sharing mode, MIG layout, health) and monitoring
(current readings, time series, the wasted-GPU report). Only pydantic here, like `schemas`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gpupool.api.schemas import GpuInfo, Model, MpsInfo

SharingModeName = Literal["exclusive", "shared", "mps", "mig"]
GPU_METRICS = ("utilization_pct", "memory_used_bytes", "power_w", "temperature_c")


# ------------------------------------------------------------------------------------------ admin
class SharingSet(Model):
    """PUT /nodes/{node}/gpus/{index}/sharing: the GPU's new sharing mode."""

    mode: SharingModeName


class MigSet(Model):
    """PUT /nodes/{node}/gpus/{index}/mig: a MIG layout such as "3g.40gb,2g.20gb,1g.10gb,1g.10gb"; "none"
    removes every instance and turns MIG off."""

    layout: str = Field(max_length=256)


class GpuChange(Model):
    """What an admin change did: the GPU as it is now, `status` (e.g. "changed", "unchanged", "applied",
    "pending_reset", "disabled", "cleared") and a message; `pending_reset` when MIG mode waits for a GPU reset."""

    node: str
    gpu: GpuInfo
    status: str
    message: str
    pending_reset: bool = False
    mps: MpsInfo | None = None


# ------------------------------------------------------------------------------------- monitoring
class GpuUser(Model):
    """A replica holding (part of) a GPU: what it was given and what its processes use now. `workload_id` is
    None for workloads of projects the caller may not see."""

    workload_id: int | None
    project: str
    replica: int
    milli: int
    memory_mib: int
    mig_instance: int | None = None
    memory_used_bytes: int | None = None


class GpuNow(Model):
    """One GPU's latest reading (values NVML cannot give are None) and who uses it."""

    node: str
    index: int
    uuid: str
    model: str
    mode: str
    simulated: bool
    healthy: bool
    health: str | None = None
    sampled_at: float | None = None
    utilization_pct: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    power_w: float | None = None
    temperature_c: float | None = None
    allocated_milli: int = 0
    users: list[GpuUser] = Field(default_factory=list)
    unowned_memory_bytes: int = 0
    mps_server_memory_bytes: int = 0
    attribution_note: str | None = None


class SeriesPoint(Model):
    """One point of a time series: the start of its interval (or the sample time), the mean and the maximum."""

    t: float
    mean: float
    max: float


class Series(Model):
    """One metric over time: of a GPU (`node`, `gpu`) or of a workload on a node (`workload_id`)."""

    node: str
    metric: str
    gpu: int | None = None
    workload_id: int | None = None
    points: list[SeriesPoint] = Field(default_factory=list)


class SeriesPage(Model):
    """Time series between `since` and `until` (seconds since the epoch), from the finest resolution that
    still covers `since`: raw samples for the last hour, 1-minute points for a day, 15-minute for 30 days."""

    since: float
    until: float
    series: list[Series] = Field(default_factory=list)


class IdleAllocationInfo(Model):
    """A GPU allocation whose card has been idle longer than the threshold: a wasted GPU."""

    node: str
    gpu: int
    workload_id: int
    workload: str
    project: str
    user: str
    replica: int
    milli: int
    idle_since: float
    idle_for_s: float


class IdleReport(Model):
    """GET /reports/idle: allocations idle (utilisation at most `idle_max_pct`) for at least `threshold_s`,
    longest first, and the GPU capacity they hold (milli)."""

    threshold_s: float
    idle_max_pct: float
    wasted_gpu_milli: int = 0
    allocations: list[IdleAllocationInfo] = Field(default_factory=list)
