"""Replica states and the job lifecycle, as pure functions: a view of a workload in, a step out."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from gpupool.domain.errors import InvalidTransitionError, ValidationError
from gpupool.domain.lifecycle import (
    LIFECYCLES,
    JobLifecycle,
    ReplicaView,
    Step,
    WorkloadView,
    lifecycle_for,
    set_controller_status,
)
from gpupool.domain.replicas import (
    REPLICA_TRANSITIONS,
    TERMINAL_REPLICA_STATES,
    ReplicaState,
    can_replica_transition,
    check_replica_transition,
)
from gpupool.domain.status import StatusEvent, WorkloadStatus

S = WorkloadStatus
R = ReplicaState
JOB = JobLifecycle()


def replica(number: int, state: ReplicaState, exit_code: int | None = None, ended_at: float | None = None,
            stop_requested: bool = False, message: str = "") -> ReplicaView:
    return ReplicaView(number, "worker", state, exit_code, message, ended_at, stop_requested)


def view(status: WorkloadStatus, *replicas: ReplicaView, retries: int = 0, retries_used: int = 0,
         started_at: float | None = None, max_runtime_s: int | None = None) -> WorkloadView:
    return WorkloadView(status, replicas, retries, retries_used, started_at, max_runtime_s)


# ------------------------------------------------------------------------------------- replica states
def test_terminal_replica_states_are_defined_once_and_never_left() -> None:
    assert {s for s in ReplicaState if s.is_terminal} == TERMINAL_REPLICA_STATES
    for end in TERMINAL_REPLICA_STATES:
        assert REPLICA_TRANSITIONS[end] == frozenset()
        for target in ReplicaState:
            assert not can_replica_transition(end, target)
    with pytest.raises(InvalidTransitionError, match="already ended"):
        check_replica_transition(R.SUCCEEDED, R.RUNNING)


def test_replicas_move_forward_only() -> None:
    assert can_replica_transition(R.PENDING, R.STARTING)
    assert can_replica_transition(R.STARTING, R.STARTING)  # a poll that sees no change
    assert can_replica_transition(R.PENDING, R.STOPPED)  # stopped before it started
    with pytest.raises(InvalidTransitionError, match="from running to starting"):
        check_replica_transition(R.RUNNING, R.STARTING)
    with pytest.raises(InvalidTransitionError):
        check_replica_transition(R.RUNNING, R.PENDING)


# -------------------------------------------------------------------------------------- registry
def test_registry_is_explicit_and_refuses_unregistered_kinds() -> None:
    assert isinstance(lifecycle_for("job"), JobLifecycle)
    assert sorted(LIFECYCLES) == ["array", "job", "notebook", "pipeline", "service", "sweep"]
    assert lifecycle_for("service").advance(view(S.RUNNING), 0.0) is None  # its autoscaler sets its status
    with pytest.raises(ValidationError,
                       match="kind 'volume' cannot run yet; kinds that can: array, job, notebook, pipeline, "
                             "service, sweep"):
        lifecycle_for("volume")


# ---------------------------------------------------------------------------------- job lifecycle
def test_job_runs_once_every_replica_runs_and_succeeds_when_all_exit_0() -> None:
    assert JOB.advance(view(S.STARTING, replica(0, R.RUNNING), replica(1, R.STARTING)), now=5) is None
    step = JOB.advance(view(S.STARTING, replica(0, R.RUNNING), replica(1, R.SUCCEEDED, 0)), now=5)
    assert step == Step(S.RUNNING, "all 2 replica(s) running", started=True)
    done = JOB.advance(view(S.RUNNING, replica(0, R.SUCCEEDED, 0), replica(1, R.SUCCEEDED, 0)), now=9)
    assert done == Step(S.SUCCEEDED, "all 2 replica(s) exited with code 0")


def test_failure_with_a_retry_left_stops_the_gang_then_requeues() -> None:
    failed = replica(1, R.FAILED, 3, ended_at=7.0)
    # the other replica still runs: stop it, keep the status
    assert JOB.advance(view(S.RUNNING, replica(0, R.RUNNING), failed, retries=2), now=8) == Step(stop=True)
    step = JOB.advance(view(S.RUNNING, replica(0, R.STOPPED, stop_requested=True), failed, retries=2), now=9)
    assert step == Step(S.PENDING, "retry 1 of 2 after replica 1 (worker) failed: exit code 3", count_retry=True,
                        reset_start=True)


def test_failure_without_retries_ends_failed_and_lost_when_every_failure_was_lost() -> None:
    step = JOB.advance(view(S.RUNNING, replica(0, R.RUNNING), replica(1, R.FAILED, 1, 4.0)), now=5)
    assert step == Step(S.FAILED, "replica 1 (worker) failed: exit code 1", stop=True)
    lost = JOB.advance(view(S.RUNNING, replica(0, R.LOST, message="gone", ended_at=3.0), retries=1,
                            retries_used=1), now=5)
    assert lost == Step(S.LOST, "replica 0 (worker) lost: gone; no retries left", stop=True)


def test_a_replica_that_stopped_unasked_is_a_failure_and_the_earliest_end_is_named() -> None:
    step = JOB.advance(view(S.RUNNING, replica(0, R.FAILED, 2, ended_at=9.0), replica(1, R.STOPPED, ended_at=4.0)),
                       now=10)
    assert step is not None and step.target == S.FAILED
    assert step.reason.startswith("replica 1 (worker) stopped")


def test_max_runtime_fails_the_job_strictly_after_the_limit() -> None:
    running = (replica(0, R.RUNNING),)
    # started at 100 with a 60 s limit: 160 is still allowed, 160.5 is over
    assert JOB.advance(view(S.RUNNING, *running, started_at=100, max_runtime_s=60), now=160) is None
    step = JOB.advance(view(S.RUNNING, *running, started_at=100, max_runtime_s=60), now=160.5)
    assert step == Step(S.FAILED, "ran longer than its max_runtime (60s); stopped", stop=True)


def test_preempted_job_is_requeued_only_once_its_replicas_are_gone() -> None:
    assert JOB.advance(view(S.PREEMPTED, replica(0, R.RUNNING, stop_requested=True)), now=1) is None
    step = JOB.advance(view(S.PREEMPTED, replica(0, R.STOPPED, stop_requested=True)), now=2)
    assert step == Step(S.PENDING, "requeued after preemption; waiting to be scheduled again", reset_start=True)


@pytest.mark.parametrize("status", [S.PENDING, S.SUCCEEDED, S.CANCELLED])
def test_inactive_jobs_do_not_move(status: WorkloadStatus) -> None:
    assert JOB.advance(view(status, replica(0, R.FAILED, 1)), now=1) is None


# --------------------------------------------------------------------------- controller statuses
@dataclass
class Controller:
    """A controller's row as `set_controller_status` sees it."""

    status: WorkloadStatus = S.PENDING
    started_at: float | None = None
    events: list[StatusEvent] = field(default_factory=list)

    @property
    def current_status(self) -> WorkloadStatus:
        return self.status

    def record_status_event(self, event: StatusEvent) -> None:
        self.status = event.to_status
        self.events.append(event)

    def path(self) -> list[tuple[str, str, str]]:
        return [(e.from_status.value, e.to_status.value, e.reason) for e in self.events]


def test_a_pending_controller_passes_scheduled_to_run_and_records_its_start() -> None:
    row = Controller()
    events = set_controller_status(row, S.RUNNING, "1 replica serving", 5.0, start_reason="replica submitted")
    assert row.path() == [("pending", "scheduled", "replica submitted"), ("scheduled", "running", "1 replica serving")]
    assert events == row.events and row.started_at == 5.0
    assert set_controller_status(row, S.RUNNING, "2 replicas serving", 6.0) == []  # already running: no event
    assert row.started_at == 5.0


def test_a_controller_that_ends_from_pending_has_run_first() -> None:
    row = Controller()
    set_controller_status(row, S.FAILED, "step a failed", 3.0, start_reason="steps are being submitted")
    assert row.path() == [("pending", "scheduled", "steps are being submitted"),
                          ("scheduled", "running", "steps are being submitted"), ("running", "failed", "step a failed")]
    assert row.started_at == 3.0


def test_pending_and_cancelled_are_taken_directly() -> None:
    row = Controller(S.RUNNING, started_at=1.0)
    set_controller_status(row, S.PENDING, "scaled to zero", 2.0)  # a service whose last replica went
    assert row.path() == [("running", "pending", "scaled to zero")]
    set_controller_status(row, S.RUNNING, "1 replica serving", 3.0)  # woken again: a new start
    assert row.status == S.RUNNING and row.started_at == 3.0
    fresh = Controller()
    set_controller_status(fresh, S.CANCELLED, "cancelled by alice", 4.0)
    assert fresh.path() == [("pending", "cancelled", "cancelled by alice")] and fresh.started_at is None


def test_an_ended_controller_is_left_alone_and_stopped_ones_requeue_first() -> None:
    ended = Controller(S.SUCCEEDED)
    assert set_controller_status(ended, S.RUNNING, "late", 1.0) == [] and ended.status == S.SUCCEEDED
    stopped = Controller(S.STOPPED)
    set_controller_status(stopped, S.RUNNING, "serving", 2.0, start_reason="woken")
    assert [e[1] for e in stopped.path()] == ["pending", "scheduled", "running"]


def test_a_controller_status_change_still_needs_a_reason() -> None:
    with pytest.raises(ValidationError, match="needs a reason"):
        set_controller_status(Controller(), S.CANCELLED, " ", 1.0)
