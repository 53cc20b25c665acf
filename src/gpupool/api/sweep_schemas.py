"""API types of sweeps (`/api/v1/sweeps`): a sweep's trials and best trial, and a trial's report answer."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from gpupool.api.schemas import Model


class SweepTrial(Model):
    """One trial: Optuna's state (running, complete, pruned, fail), its parameters, its value (the last value
    it reported for the objective), its job (`workload_id`, `status`) and how long that ran. `intermediate`
    holds the objective at its last reported steps only (as many as the request's `steps` asks), in step order;
    `steps_total` says how many steps it reported in all."""

    number: int
    state: str
    params: dict[str, Any]
    value: float | None = None
    last_step: int | None = None
    intermediate: list[tuple[int, float]] = Field(default_factory=list)
    steps_total: int = 0
    workload_id: int | None = None
    status: str | None = None
    message: str = ""
    duration_s: float | None = None


class SweepDetail(Model):
    """A sweep: its workload (id, name, status), objective, search space and algorithm as submitted, counts,
    its trials in order and the best completed one."""

    id: int
    name: str
    project: str
    status: str
    message: str
    metric: str
    direction: str
    planned: int
    parallel: int
    search: dict[str, Any]
    algorithm: dict[str, Any]
    trials: list[SweepTrial]
    best: SweepTrial | None = None


class TrialReportAnswer(Model):
    """What a trial learns after a report: whether it should stop now (the pruner stopped it)."""

    should_prune: bool
    step: int
