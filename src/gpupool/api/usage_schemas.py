"""API types of usage accounting (GET /api/v1/usage). Only pydantic here, like `schemas`."""

from __future__ import annotations

from typing import Literal

from gpupool.api.schemas import Model

UsageGrouping = Literal["project", "user"]
UsagePeriod = Literal["day", "week", "month"]


class UsageLine(Model):
    """GPU-hours of one project or user in one period (its start, UTC). `busy_gpu_h` and `idle_gpu_h` come
    from the sampler and cover `observed_gpu_h` of the allocated time (the rest had no sample)."""

    period_start: float
    period: str
    group: str
    allocated_gpu_h: float
    busy_gpu_h: float
    idle_gpu_h: float
    observed_gpu_h: float
    workloads: int


class UsageReport(Model):
    """Usage between `since` and `until`, grouped `by` project or user per `period`; `idle_max_pct` is the
    utilisation at or below which an allocated GPU counted as idle. Non-admins see their projects only."""

    by: UsageGrouping
    period: UsagePeriod
    since: float
    until: float
    idle_max_pct: float
    lines: list[UsageLine]
    total_allocated_gpu_h: float
    total_busy_gpu_h: float
    total_idle_gpu_h: float
