"""Pipelines: store definitions, start runs, show, retry, cancel, pause and resume schedules.

A pipeline definition (`pipelines` table) is the parsed `kind: pipeline` spec, one per name and project.
A run is a workload of kind pipeline (a controller: never placed) with a `pipeline_runs` row (params, the
schedule fire that started it) and one `pipeline_steps` row per step, all written in one transaction. The
pipeline worker (`gpupool.server.workers.pipelines`) then submits the steps as child workloads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpupool.api import pipeline_schemas as ps
from gpupool.api import schemas
from gpupool.domain.errors import ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from gpupool.domain.lifecycle import set_controller_status
from gpupool.domain.pipeline_runs import StepState, retry_states, run_params
from gpupool.domain.pipelines import PipelineSpec
from gpupool.domain.specs import parse_spec, validate_name
from gpupool.domain.status import WorkloadStatus
from gpupool.executors.storage import ScopeOwners, StorageLayout
from gpupool.server.services import workloads
from gpupool.server.services.auth import Principal
from gpupool.store.orm import PipelineRow, PipelineRunRow, PipelineStepRow, ScheduleFireRow, WorkloadRow
from gpupool.store.repos import accounts, queues
from gpupool.store.repos import workloads as repo

MAX_RUNS_LISTED = 200
FIRES_SHOWN = 20  # the latest fires `pipeline runs` shows: a few weeks of a nightly schedule


def run_dir(storage: StorageLayout, project: str, run_id: int) -> Path:
    """The directory of run `run_id` in its project's storage ($GPUPOOL_RUN_DIR of every step; a retry
    uses the directory of the run it retries, see `PipelineRunRow.dir_run_id`)."""
    return storage.project_dir(project) / "pipeline-runs" / str(run_id)


def step_dir(storage: StorageLayout, project: str, run_id: int, step: str) -> Path:
    """A step's own directory in its run's ($GPUPOOL_STEP_DIR); its outputs.json is read from there."""
    return run_dir(storage, project, run_id) / "steps" / validate_name(step, "step")


def parse_pipeline_data(data: Any) -> PipelineSpec:
    """The pipeline spec of `data`; ValidationError when it is not a valid `kind: pipeline` spec."""
    if not isinstance(data, dict) or data.get("kind") != "pipeline":
        raise ValidationError("expected a pipeline spec (kind: pipeline); submit jobs with `gpupool submit`", "kind")
    spec = parse_spec(data)
    if not isinstance(spec, PipelineSpec):  # kind pipeline parses to a PipelineSpec; keep the checker honest
        raise ValidationError("expected a pipeline spec", "kind")
    return spec


# ------------------------------------------------------------------------------------ definitions
def submit_pipeline(session: Session, principal: Principal, body: ps.PipelineSubmit, now: float,
                    next_fire: Any = None) -> PipelineRow:
    """Store (or replace) a pipeline definition; `next_fire(spec, now)` gives its first fire time (None
    without a schedule). Members and admins of the project may; viewers may not."""
    request = schemas.SubmitRequest(spec=body.spec, spec_yaml=body.spec_yaml, idempotency_key=None, workdir=None)
    data = workloads.load_spec_input(request)
    spec = parse_pipeline_data(data)
    project_id, project = workloads._resolve_project(session, principal, spec)  # the same rule as jobs
    queue = queues.queue_of_project(session, project_id)
    if queue is None:
        raise ConflictError(f"project {project} has no queue; ask an administrator to recreate it")
    if spec.queue is not None and spec.queue != queue.name:
        raise ValidationError(f"project {project} submits to queue {queue.name}", "queue")
    canonical = spec.to_dict() | {"project": project, "queue": queue.name}
    row = session.scalars(select(PipelineRow).where(PipelineRow.project_id == project_id,
                                                    PipelineRow.name == spec.name).with_for_update()).first()
    first_fire = next_fire(spec, now) if next_fire is not None and spec.schedule is not None else None
    if row is None:
        row = PipelineRow(project_id=project_id, name=spec.name, user_id=principal.user_id, spec=canonical,
                          created_at=now, updated_at=now, paused=False, next_fire_at=first_fire)
        session.add(row)
        session.flush()
    elif row.spec != canonical:
        old_schedule = row.spec.get("schedule")
        row.spec, row.user_id, row.updated_at = canonical, principal.user_id, now
        if old_schedule != canonical.get("schedule"):
            row.next_fire_at = first_fire  # a new schedule counts from now: no catch-up of the old one
    return row


def pipeline_by_name(session: Session, principal: Principal, name: str, project: str | None = None,
                     for_update: bool = False) -> PipelineRow:
    """The pipeline called `name` in one of the caller's projects (`project` when given); NotFoundError
    otherwise, ValidationError when the name is in several of them and no project was named."""
    query = select(PipelineRow).where(PipelineRow.name == validate_name(name, "name")).order_by(PipelineRow.id)
    names = accounts.project_names_kept(session)
    rows = [r for r in session.scalars(query.with_for_update() if for_update else query)
            if principal.can_read(r.project_id) and (project is None or names.get(r.project_id) == project)]
    if not rows:
        raise NotFoundError(f"pipeline {name!r} not found in your projects; submit it with `gpupool pipeline "
                            "submit FILE`")
    if len(rows) > 1:
        raise ValidationError(f"pipeline {name!r} is in projects {', '.join(names[r.project_id] for r in rows)}; "
                              "name one with --project", "project")
    return rows[0]


def pipeline_view(session: Session, row: PipelineRow) -> ps.PipelineInfo:
    """A definition with its latest schedule fires."""
    names = accounts.project_names_kept(session)
    users = accounts.user_names(session, {row.user_id})
    fires = session.scalars(select(ScheduleFireRow).where(ScheduleFireRow.pipeline_id == row.id)
                            .order_by(ScheduleFireRow.fire_at.desc()).limit(FIRES_SHOWN)).all()
    return ps.PipelineInfo(id=row.id, name=row.name, project=names.get(row.project_id, "?"),
                           user=users.get(row.user_id, "?"), spec=row.spec, paused=row.paused,
                           next_fire_at=row.next_fire_at, updated_at=row.updated_at,
                           fires=[ps.ScheduleFire(fire_at=f.fire_at, outcome=f.outcome, reason=f.reason,
                                                  run_id=f.run_id) for f in fires])


def set_paused(session: Session, principal: Principal, name: str, project: str | None, paused: bool,
               now: float, next_fire: Any = None) -> PipelineRow:
    """Pause or resume a pipeline's schedule. Resuming counts fires from now (the paused time is not caught
    up). Members and admins may; viewers may not."""
    row = pipeline_by_name(session, principal, name, project, for_update=True)
    require_write(principal, row.project_id, "pause or resume pipelines")
    if row.paused != paused:
        row.paused, row.updated_at = paused, now
        if not paused and next_fire is not None:
            row.next_fire_at = next_fire(parse_pipeline_data(row.spec), now)
    return row


# ------------------------------------------------------------------------------------------- runs
def start_run(session: Session, pipeline: PipelineRow, user_id: int, overrides: Mapping[str, Any], now: float,
              key: str | None = None, fire_at: float | None = None) -> tuple[WorkloadRow, bool]:
    """Create a run of `pipeline` (the run workload, its params, its steps, waiting) as user `user_id`;
    returns (run, created). With `key`, a second call returns the first run (created False)."""
    if key is not None:
        existing = repo.workload_by_key(session, user_id, key)
        if existing is not None:
            return existing, False
    spec = parse_pipeline_data(pipeline.spec)
    params = run_params(spec, overrides)
    run = WorkloadRow(name=pipeline.name, kind="pipeline", project_id=pipeline.project_id,
                      queue=pipeline.spec["queue"], user_id=user_id, spec=pipeline.spec, priority=spec.priority,
                      replica_count=0, submitted_at=now, updated_at=now, idempotency_key=key, message="submitted",
                      attempt=0, retries_used=0, preemptions=0)
    session.add(run)
    session.flush()
    session.add(PipelineRunRow(run_id=run.id, pipeline_id=pipeline.id, params=params, fire_at=fire_at,
                               dir_run_id=run.id))
    for step in spec.steps:
        session.add(PipelineStepRow(run_id=run.id, step=step.name, state=StepState.WAITING.value, generation=0,
                                    reason="waiting for " + (", ".join(step.needs) or "the run to start")))
    why = "started by its schedule" if fire_at is not None else "started"
    repo.add_event(session, run.id, now, f"pipeline {pipeline.name} {why} with params {params}")
    return run, True


def visible_run(session: Session, principal: Principal, run_id: int, for_update: bool = False) -> WorkloadRow:
    """The run if the caller may see it; NotFoundError otherwise (also for workloads that are not runs)."""
    row = workloads.visible_workload(session, principal, run_id, for_update=for_update)
    if row.kind != "pipeline":
        raise NotFoundError(f"workload {run_id} is a {row.kind}, not a pipeline run")
    return row


def steps_of(session: Session, run_id: int) -> list[PipelineStepRow]:
    """The step rows of a run, by id (the spec's order)."""
    return list(session.scalars(select(PipelineStepRow).where(PipelineStepRow.run_id == run_id)
                                .order_by(PipelineStepRow.id)))


def run_view(session: Session, run: WorkloadRow, storage: StorageLayout) -> ps.RunInfo:
    """A run with its steps in the spec's order."""
    project = accounts.project_names_kept(session).get(run.project_id, "?")
    extra = session.get(PipelineRunRow, run.id)
    steps = steps_of(session, run.id)
    children = {w.id: w for w in session.scalars(select(WorkloadRow).where(WorkloadRow.parent_id == run.id))}
    needs = {name: list(s.get("needs", [])) for name, s in run.spec.get("steps", {}).items()}
    return ps.RunInfo(
        id=run.id, pipeline=run.name, project=project, status=run.status, message=run.message,
        params=extra.params if extra else {}, fire_at=extra.fire_at if extra else None,
        submitted_at=run.submitted_at, started_at=run.started_at, finished_at=run.finished_at,
        run_dir=str(run_dir(storage, project, (extra.dir_run_id if extra else None) or run.id)),
        retry_of=extra.retry_of if extra else None,
        steps=[ps.StepInfo(name=s.step, state=s.state, reason=s.reason, needs=needs.get(s.step, []),
                           workload_id=s.workload_id, generation=s.generation, started_at=s.started_at,
                           finished_at=s.finished_at, outputs=s.outputs or {},
                           workload_status=children[s.workload_id].status if s.workload_id in children else None)
               for s in steps])


def list_runs(session: Session, principal: Principal, name: str, project: str | None, limit: int,
              storage: StorageLayout) -> ps.RunPage:
    """The newest runs of a pipeline first."""
    if not 1 <= limit <= MAX_RUNS_LISTED:
        raise ValidationError(f"limit must be 1..{MAX_RUNS_LISTED}", "limit")
    pipeline = pipeline_by_name(session, principal, name, project)
    ids = session.scalars(select(PipelineRunRow.run_id).where(PipelineRunRow.pipeline_id == pipeline.id)
                          .order_by(PipelineRunRow.run_id.desc()).limit(limit)).all()
    runs = [repo.workload_by_id(session, i) for i in ids]
    return ps.RunPage(items=[run_view(session, r, storage) for r in runs if r is not None])


def retry_run(session: Session, principal: Principal, run_id: int, now: float) -> tuple[WorkloadRow, bool]:
    """Re-run a failed or cancelled run from its failed steps, as a new run of the same spec and params that
    shares the first run's directory: the steps that failed, were cancelled or never started because of the
    failure wait again; the others (succeeded, or skipped by their condition) are kept with their outputs.
    Returns (new run, created); retrying the same run twice returns the first retry."""
    old = visible_run(session, principal, run_id, for_update=True)
    require_write(principal, old.project_id, "retry pipeline runs")
    status = old.current_status
    if status not in (WorkloadStatus.FAILED, WorkloadStatus.CANCELLED):
        raise ConflictError(f"run {run_id} is {status}; only failed or cancelled runs can be retried")
    key = f"pipeline-retry-of-{old.id}"
    existing = repo.workload_by_key(session, principal.user_id, key)
    if existing is not None:
        return existing, False
    old_steps = steps_of(session, old.id)
    busy = [s.step for s in old_steps if s.state in (StepState.WAITING.value, StepState.SUBMITTED.value)]
    if busy:
        raise ConflictError(f"run {run_id} is still cancelling step(s) {', '.join(busy)}; retry in a moment")
    from gpupool.server.workers.pipelines import records_of  # noqa: PLC0415  (the worker imports this module)

    reset = retry_states(records_of(old_steps))
    extra = session.get(PipelineRunRow, old.id)
    if extra is None:
        raise ConflictError(f"run {run_id} has lost its pipeline record; start a new run instead")
    run = WorkloadRow(name=old.name, kind="pipeline", project_id=old.project_id, queue=old.queue,
                      user_id=principal.user_id, spec=old.spec, priority=old.priority, replica_count=0,
                      submitted_at=now, updated_at=now, idempotency_key=key, message="submitted", attempt=0,
                      retries_used=0, preemptions=0)
    session.add(run)
    session.flush()
    session.add(PipelineRunRow(run_id=run.id, pipeline_id=extra.pipeline_id, params=extra.params, fire_at=None,
                               retry_of=old.id, dir_run_id=extra.dir_run_id or old.id))
    for step in old_steps:
        if step.step in reset:
            session.add(PipelineStepRow(run_id=run.id, step=step.step, state=StepState.WAITING.value, generation=0,
                                        reason=f"waiting (retry of run {old.id}, where it was {step.state})"))
        else:
            session.add(PipelineStepRow(run_id=run.id, step=step.step, state=step.state, generation=0,
                                        workload_id=step.workload_id, reason=f"kept from run {old.id}: {step.reason}",
                                        outputs=step.outputs, started_at=step.started_at,
                                        finished_at=step.finished_at))
    repo.add_event(session, run.id, now, f"retry of run {old.id} by {principal.name}: re-runs "
                                         f"{', '.join(sorted(reset))}")
    return run, True


def cancel_run(session: Session, principal: Principal, run_id: int, now: float) -> WorkloadRow:
    """Cancel a run: the run ends cancelled at once; the pipeline worker cancels every step (waiting steps
    never start, submitted ones are cancelled and their replicas stopped)."""
    visible_run(session, principal, run_id)
    return workloads.cancel(session, principal, run_id, now)


def require_write(principal: Principal, project_id: int, action: str) -> None:
    """PermissionDeniedError (naming `action`) unless the caller may write to the project."""
    if not principal.can_write(project_id):
        raise PermissionDeniedError(f"viewers cannot {action}; ask a project admin for the member role")


def transition_run(run: WorkloadRow, target: WorkloadStatus, reason: str, now: float) -> None:
    """Move a run towards `target` through the one door (`set_controller_status`): a pending run passes
    scheduled and running (a controller is never placed, so its steps being submitted is its start)."""
    set_controller_status(run, target, reason, now, start_reason="steps are being submitted")


def runs_needing_work(session: Session) -> Sequence[int]:
    """Ids of runs the pipeline worker must look at: not ended, or with steps still waiting or submitted."""
    active = session.scalars(select(WorkloadRow.id).where(WorkloadRow.kind == "pipeline", WorkloadRow.status.in_(
        [WorkloadStatus.PENDING.value, WorkloadStatus.RUNNING.value]))).all()
    open_steps = session.scalars(select(PipelineStepRow.run_id).where(PipelineStepRow.state.in_(
        [StepState.WAITING.value, StepState.SUBMITTED.value])).distinct()).all()
    return sorted(set(active) | set(open_steps))


RUN_DIR_MODE = 0o2770  # like the project directory: the project's group reads and writes, others nothing


def step_environment(session: Session, child: WorkloadRow, storage: StorageLayout, project: str,
                     owners: ScopeOwners | None) -> dict[str, str]:
    """GPUPOOL_RUN_DIR, GPUPOOL_STEP_DIR and GPUPOOL_OUTPUTS for a replica of a pipeline step (creating the
    directories, owned by the step's user and the project's group in a multi-user pool); {} for workloads
    that are not pipeline steps."""
    extra = session.get(PipelineRunRow, child.parent_id) if child.parent_id is not None else None
    if extra is None:
        return {}
    run_path = run_dir(storage, project, extra.dir_run_id or extra.run_id)
    step_path = step_dir(storage, project, extra.dir_run_id or extra.run_id, child.name)
    for path in (run_path, run_path / "steps", step_path):
        try:
            path.mkdir(parents=True)
            path.chmod(RUN_DIR_MODE)
        except FileExistsError:
            pass
        if owners is not None:
            os.chown(path, owners.user_uid, owners.project_gid)
    return {"GPUPOOL_RUN_DIR": str(run_path), "GPUPOOL_STEP_DIR": str(step_path),
            "GPUPOOL_OUTPUTS": str(step_path / "outputs.json")}
