"""Pipeline schedules: fire the due cron times of every pipeline that has a schedule and is not paused.

For one pipeline, in one transaction (the pipeline row locked): read the fires due since its stored
`next_fire_at`, decide which run (`catch_up`, see `gpupool.domain.schedules`), record every fire
(`schedule_fires`, unique per pipeline and fire time), apply `concurrency` to each fire that runs (allow; forbid:
skipped with the run that is still going; replace: the old run is cancelled), start the runs (idempotency key
`schedule-<pipeline>-<fire time>`), and store the next fire time. The fire records, the runs and the new
next-fire time commit together: a kill -9 before the commit leaves the fires due (the next pass fires them
once), after it leaves them done; a fire is never lost nor run twice.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpupool.domain.pipelines import PipelineSpec, ScheduleSpec
from gpupool.domain.schedules import decide_fires, fires_between, next_fire_after
from gpupool.domain.status import WorkloadStatus, transition
from gpupool.server.services import pipelines as service
from gpupool.store.orm import PipelineRow, PipelineRunRow, ScheduleFireRow, WorkloadRow


def next_fire(spec: PipelineSpec, now: float) -> float | None:
    """The first fire of the pipeline's schedule after `now` (None without a schedule)."""
    if spec.schedule is None:
        return None
    return next_fire_after(spec.schedule.cron, spec.schedule.timezone, now)


def due_pipelines(session: Session, now: float) -> Sequence[int]:
    """Ids of pipelines whose schedule has a fire due (not paused)."""
    return session.scalars(select(PipelineRow.id).where(PipelineRow.next_fire_at.is_not(None),
                                                        PipelineRow.next_fire_at <= now,
                                                        PipelineRow.paused.is_(False))
                           .order_by(PipelineRow.id)).all()


def fire_due(session: Session, pipeline_id: int, now: float) -> int:
    """Fire what is due for one pipeline (see the module), in the caller's transaction; returns how many
    fires were recorded."""
    row = session.scalars(select(PipelineRow).where(PipelineRow.id == pipeline_id).with_for_update()).first()
    if row is None or row.paused or row.next_fire_at is None or row.next_fire_at > now:
        return 0
    spec = service.parse_pipeline_data(row.spec)
    schedule = spec.schedule
    if schedule is None:
        row.next_fire_at = None
        return 0
    due, left_out = fires_between(schedule.cron, schedule.timezone, row.next_fire_at, now)
    recorded = 0
    for decision in decide_fires(due, now, schedule.catch_up, schedule.max_catch_up, left_out):
        if session.scalars(select(ScheduleFireRow.id).where(ScheduleFireRow.pipeline_id == row.id,
                                                            ScheduleFireRow.fire_at == decision.at)).first():
            continue  # already recorded (a fire is handled once)
        fire = ScheduleFireRow(pipeline_id=row.id, fire_at=decision.at, recorded_at=now, outcome="pending",
                               reason=decision.reason)
        session.add(fire)
        session.flush()  # the fire is stored before its run is started
        if decision.run:
            _run_fire(session, row, schedule, fire, now)
        else:
            fire.outcome = "skipped"
        recorded += 1
    row.next_fire_at = next_fire_after(schedule.cron, schedule.timezone, now)
    return recorded


def _run_fire(session: Session, row: PipelineRow, schedule: ScheduleSpec, fire: ScheduleFireRow, now: float) -> None:
    active = active_runs(session, row.id)
    if active and schedule.concurrency == "forbid":
        fire.outcome = "skipped"
        fire.reason = f"run {active[0].id} is still {active[0].status} (concurrency: forbid)"
        return
    if active and schedule.concurrency == "replace":
        for old in active:
            transition(old, WorkloadStatus.CANCELLED, f"replaced by the run of the schedule fire at {fire.fire_at:.0f} "
                       "(concurrency: replace)", now)
        fire.reason += f"; replaced run {', '.join(str(r.id) for r in active)}"
    run, _ = service.start_run(session, row, row.user_id, {}, now, key=f"schedule-{row.id}-{fire.fire_at:.0f}",
                               fire_at=fire.fire_at)
    fire.outcome, fire.run_id = "ran", run.id


def active_runs(session: Session, pipeline_id: int) -> list[WorkloadRow]:
    """The runs of a pipeline that have not ended, oldest first."""
    return list(session.scalars(
        select(WorkloadRow).join(PipelineRunRow, PipelineRunRow.run_id == WorkloadRow.id)
        .where(PipelineRunRow.pipeline_id == pipeline_id, WorkloadRow.status.in_(
            [WorkloadStatus.PENDING.value, WorkloadStatus.RUNNING.value]))
        .order_by(WorkloadRow.id).with_for_update()))
