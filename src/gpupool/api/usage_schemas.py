"""API types of usage accounting (GET /api/v1/usage). Only pydantic here, like `schemas`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

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


class DryRunPlacement(Model):
    """Where one replica would run: node and GPU cards (index, milli)."""

    node: str
    gpus: list[dict[str, int]]


class DryRunResult(Model):
    """POST /workloads/dry-run: what the scheduler would do with this spec now, without submitting it.
    `verdict` is "now" (it would start at once, on `placements`), "preempting" (it would start after
    stopping `preempts` workloads), "waits" (it would stay pending: `reason`, `position` in its queue,
    `expected_start` when a reservation gives one) or "never" (it can never run as asked: `reason`)."""

    verdict: Literal["now", "preempting", "waits", "never"]
    project: str
    queue: str
    reason: str | None = None
    position: int | None = None
    expected_start: float | None = None
    preempts: int = 0
    placements: list[DryRunPlacement] = Field(default_factory=list)


class ConsoleLink(Model):
    """POST /console/links: a one-time sign-in link for the web console (a path on the server), valid once
    for `expires_in_s` seconds."""

    path: str
    expires_in_s: float
