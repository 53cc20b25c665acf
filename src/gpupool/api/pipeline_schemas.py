"""API types of pipelines and their runs (`/api/v1/pipelines`, `/api/v1/pipeline-runs`), shared by the
server, the HTTP client and the CLI. Only pydantic here."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from gpupool.api.schemas import KEY_PATTERN, MAX_SPEC_CHARS, Model

MAX_PARAM_OVERRIDES = 64


class PipelineSubmit(Model):
    """POST /pipelines: the pipeline spec (YAML text or an object). It replaces the definition of the same
    name in the project; `run` also starts a run now (the CLI's default for a pipeline without a schedule)."""

    spec: dict[str, Any] | None = None
    spec_yaml: str | None = Field(None, max_length=MAX_SPEC_CHARS)
    run: bool = False
    idempotency_key: str | None = Field(None, pattern=KEY_PATTERN)


class RunRequest(Model):
    """POST /pipelines/{name}/runs: params overriding the pipeline's (`-p k=v`), the project when the name
    is in several of yours, and an idempotency key (a retried request returns the run the first started)."""

    params: dict[str, str | int | float | bool] = Field(default_factory=dict, max_length=MAX_PARAM_OVERRIDES)
    project: str | None = Field(None, max_length=63)
    idempotency_key: str | None = Field(None, pattern=KEY_PATTERN)


class ScheduleFire(Model):
    """One cron fire: when it was due, what happened (ran, skipped, pending) and why, the run it started."""

    fire_at: float
    outcome: str
    reason: str
    run_id: int | None = None


class PipelineInfo(Model):
    """A pipeline definition: its spec, whether its schedule is paused, the next fire, the latest fires."""

    id: int
    name: str
    project: str
    user: str
    spec: dict[str, Any]
    paused: bool
    next_fire_at: float | None = None
    updated_at: float
    fires: list[ScheduleFire] = Field(default_factory=list)


class StepInfo(Model):
    """One step of a run: its state, why, the workload that runs it, when it started and ended, what it needs
    and the outputs it wrote."""

    name: str
    state: str
    reason: str
    needs: list[str]
    workload_id: int | None = None
    workload_status: str | None = None
    generation: int
    started_at: float | None = None
    finished_at: float | None = None
    outputs: dict[str, Any] = Field(default_factory=dict)


class RunInfo(Model):
    """A pipeline run (a workload of kind pipeline): status, params, run directory and steps in order."""

    id: int
    pipeline: str
    project: str
    status: str
    message: str
    params: dict[str, Any]
    fire_at: float | None = None
    submitted_at: float
    started_at: float | None = None
    finished_at: float | None = None
    run_dir: str
    retry_of: int | None = None  # the run this one retries
    steps: list[StepInfo] = Field(default_factory=list)


class PipelineSubmitted(Model):
    """The answer to POST /pipelines: the definition and, when one was started, the run."""

    pipeline: PipelineInfo
    run: RunInfo | None = None


class RunPage(Model):
    """GET /pipelines/{name}/runs: the newest runs first."""

    items: list[RunInfo]
