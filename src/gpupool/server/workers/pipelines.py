"""The pipeline worker: moves every pipeline run along, one transaction per run.

A pass, for each run that is not over (or still has steps waiting or submitted), with the run row locked:

1. sync: each submitted step whose workload ended becomes succeeded (its outputs.json read from its step
   directory), failed (the workload's reason) or cancelled;
2. a cancelled run cancels its steps: submitted workloads are cancelled (their replicas stopped), waiting
   steps never start;
3. otherwise `plan_run` (pure) says what to do: steps to submit (as child workloads of the run, through
   `services.workloads.submit` with the idempotency key `pipeline-run-<run>-<step>-<generation>`), steps
   to skip or fail, and whether the run ended.

Everything a pass decides for a run (the child workloads, the step states, the run's status) commits in
one transaction, so a kill -9 of the server between any two effects loses or doubles nothing: the next pass
starts from what was committed, and the idempotency keys turn a repeated submit into the first one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

from sqlalchemy.orm import Session

from gpupool.api import schemas
from gpupool.domain.errors import GpupoolError, ValidationError
from gpupool.domain.pipeline_runs import StepRecord, StepState, parse_outputs, plan_run
from gpupool.domain.status import WorkloadStatus, transition
from gpupool.executors.storage import StorageLayout
from gpupool.server.services import pipelines as service
from gpupool.server.services import schedules, workloads
from gpupool.server.services.auth import principal_for
from gpupool.server.services.feasibility import FeasibilityCache
from gpupool.server.workers.loop import IntervalWorker
from gpupool.store.db import Database
from gpupool.store.orm import PipelineRunRow, PipelineStepRow, WorkloadRow
from gpupool.store.repos import accounts
from gpupool.store.repos import workloads as repo

log = logging.getLogger("gpupool.pipelines")
# A step starts at most this long after its needs end, and a schedule fires this late at most; a pass with
# no active run and no due schedule is three indexed queries, so once a second costs nothing measurable.
INTERVAL_S = 1.0
MAX_OUTPUTS_BYTES = 65_536  # outputs are a few named values (see MAX_OUTPUTS); anything bigger is a mistake
_S = WorkloadStatus


def pipeline_worker(db: Database, clock: Callable[[], float], storage: StorageLayout, feasibility: FeasibilityCache,
                    on_change: Callable[[], None]) -> IntervalWorker:
    """The server's worker for pipeline runs and schedules (started with the others)."""
    return IntervalWorker("pipelines", PipelineWorker(db, clock, storage, feasibility, on_change).step, INTERVAL_S)


def records_of(steps: Iterable[PipelineStepRow]) -> dict[str, StepRecord]:
    """The pure view of stored steps."""
    return {s.step: StepRecord(StepState(s.state), s.reason, dict(s.outputs or {})) for s in steps}


class PipelineWorker:
    """Advances pipeline runs (see the module). `step()` is one pass; True when anything changed."""

    def __init__(self, db: Database, clock: Callable[[], float], storage: StorageLayout,
                 feasibility: FeasibilityCache, on_change: Callable[[], None] = lambda: None) -> None:
        self.db = db
        self.clock = clock
        self.storage = storage
        self.feasibility = feasibility
        self.on_change = on_change

    def step(self) -> bool:
        """One pass: fire the due schedules, then advance the runs that need work."""
        now = self.clock()
        with self.db.session(write=False) as session:
            due = schedules.due_pipelines(session, now)
        changed = False
        for pipeline_id in due:
            try:
                changed = bool(self.db.transaction(partial(schedules.fire_due, pipeline_id=pipeline_id,
                                                           now=now))) or changed
            except GpupoolError:
                log.exception("the schedule of pipeline %s cannot fire; trying again on the next pass", pipeline_id)
        with self.db.session(write=False) as session:
            run_ids = service.runs_needing_work(session)
        for run_id in run_ids:
            try:
                changed = self.db.transaction(partial(self.advance, run_id=run_id)) or changed
            except GpupoolError:
                log.exception("pipeline run %s cannot be advanced; trying again on the next pass", run_id)
        if changed:
            self.on_change()
        return changed

    def advance(self, session: Session, run_id: int) -> bool:
        """Advance one run (in the caller's transaction); True when anything changed."""
        run = repo.workload_by_id(session, run_id, for_update=True)
        if run is None or run.kind != "pipeline":
            return False
        now = self.clock()
        steps = service.steps_of(session, run_id)
        project = accounts.project_names(session).get(run.project_id, "")
        extra = session.get(PipelineRunRow, run_id)
        run_dir = service.run_dir(self.storage, project, (extra.dir_run_id if extra else None) or run_id)
        changed = self._sync(session, steps, run_dir, now)
        if run.current_status.is_terminal():
            return self._close(session, run, steps, now) or changed
        spec = service.parse_pipeline_data(run.spec)
        plan = plan_run(spec, extra.params if extra else {}, records_of(steps))
        by_name = {s.step: s for s in steps}
        for name, record in plan.updates.items():
            _set(by_name[name], record.state, record.reason, now)
            changed = True
        for submit in plan.submit:
            self._submit(session, run, by_name[submit.step], submit.job, now)
            changed = True
        if plan.submit and run.current_status == _S.PENDING:
            service.transition_run(run, _S.RUNNING, "steps submitted", now)
        if plan.outcome is not None:
            target = _S.SUCCEEDED if plan.outcome == "succeeded" else _S.FAILED
            service.transition_run(run, target, plan.reason, now)
            changed = True
        return changed

    def _submit(self, session: Session, run: WorkloadRow, step: PipelineStepRow, job: dict[str, object],
                now: float) -> None:
        user = accounts.user_by_id(session, run.user_id)
        key = f"pipeline-run-{run.id}-{step.step}-{step.generation}"
        try:
            if user is None:
                raise ValidationError("the run's user no longer exists")
            body = schemas.SubmitRequest(spec=job, spec_yaml=None, idempotency_key=key, workdir=None)
            child, _ = workloads.submit(session, principal_for(session, user), body, now, self.feasibility,
                                        parent_id=run.id)
        except GpupoolError as exc:
            _set(step, StepState.FAILED, f"cannot submit: {exc}", now)
            return
        step.workload_id, step.started_at = child.id, now
        _set(step, StepState.SUBMITTED, f"submitted as workload {child.id}", now, finished=False)

    @staticmethod
    def _sync(session: Session, steps: list[PipelineStepRow], run_dir: Path, now: float) -> bool:
        changed = False
        for step in steps:
            if step.state != StepState.SUBMITTED.value or step.workload_id is None:
                continue
            child = repo.workload_by_id(session, step.workload_id)
            if child is None or not child.current_status.is_terminal():
                continue
            changed = True
            if child.current_status == _S.SUCCEEDED:
                _succeeded(step, run_dir / "steps" / step.step / "outputs.json", now)
            elif child.current_status == _S.CANCELLED:
                _set(step, StepState.CANCELLED, f"workload {child.id} was cancelled: {child.message}", now)
            else:
                _set(step, StepState.FAILED, f"workload {child.id} {child.status}: {child.message}", now)
        return changed

    @staticmethod
    def _close(session: Session, run: WorkloadRow, steps: list[PipelineStepRow], now: float) -> bool:
        """A run that ended (cancelled by a user) cancels what is left of it."""
        changed = False
        for step in steps:
            if step.state == StepState.WAITING.value:
                _set(step, StepState.CANCELLED, f"not started: the run was {run.status}", now)
                changed = True
            elif step.state == StepState.SUBMITTED.value and step.workload_id is not None:
                child = repo.workload_by_id(session, step.workload_id, for_update=True)
                if child is not None and not child.current_status.is_terminal():
                    transition(child, _S.CANCELLED, f"its pipeline run {run.id} was {run.status}", now)
                    workloads.request_stop(session, child, now)
                _set(step, StepState.CANCELLED, f"cancelled: the run was {run.status}", now)
                changed = True
        return changed


def _succeeded(step: PipelineStepRow, outputs: Path, now: float) -> None:
    try:
        step.outputs = read_outputs(outputs)
    except ValidationError as exc:
        _set(step, StepState.FAILED, f"workload {step.workload_id} succeeded but {exc.detail}", now)
        return
    _set(step, StepState.SUCCEEDED, f"workload {step.workload_id} succeeded", now)


def read_outputs(path: Path) -> dict[str, object]:
    """The outputs a step wrote to `path` ({} when it wrote none); ValidationError when the file is not a
    small JSON object of names to values."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_OUTPUTS_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ValidationError(f"its outputs.json cannot be read: {exc.strerror}", "outputs") from None
    if len(data) > MAX_OUTPUTS_BYTES:
        raise ValidationError(f"its outputs.json is larger than {MAX_OUTPUTS_BYTES} bytes", "outputs")
    return dict(parse_outputs(data.decode("utf-8", errors="replace")))


def _set(step: PipelineStepRow, state: StepState, reason: str, now: float, finished: bool = True) -> None:
    step.set_state(state.value, reason, now if finished and state.is_done else None)
