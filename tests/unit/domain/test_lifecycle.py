"""Replica states and the job lifecycle, as pure functions: a view of a workload in, a step out."""

from __future__ import annotations

import pytest

from gpupool.domain.errors import InvalidTransitionError, ValidationError
from gpupool.domain.lifecycle import LIFECYCLES, JobLifecycle, ReplicaView, Step, WorkloadView, lifecycle_for
from gpupool.domain.replicas import (
    REPLICA_TRANSITIONS,
    TERMINAL_REPLICA_STATES,
    ReplicaState,
    can_replica_transition,
    check_replica_transition,
)
from gpupool.domain.status import WorkloadStatus

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
    assert sorted(LIFECYCLES) == ["array", "job", "notebook", "pipeline", "sweep"]
    with pytest.raises(ValidationError,
                       match="kind 'service' cannot run yet; kinds that can: array, job, notebook, pipeline, sweep"):
        lifecycle_for("service")


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
