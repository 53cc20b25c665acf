"""Workload statuses, the transitions allowed between them, and the one door every status change goes through.

Life cycle of a workload:

    pending -> scheduled -> starting -> running -> succeeded | failed | cancelled | lost
                                           \\-> preempted -> pending (requeued, same id)
                                           \\-> pending (a retry after a failed replica)
                                           \\-> stopped -> pending (a notebook stopped or culled, started again)

`transition` is the only function that changes a status: it refuses what the life cycle does not allow
(and anything that leaves a terminal state), and hands the holder a `StatusEvent` with the reason, which
the holder records. Nothing else assigns a status.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from gpupool.domain.errors import InvalidTransitionError, ValidationError


class WorkloadStatus(StrEnum):
    """Where a workload is in its life cycle."""

    PENDING = "pending"  # waiting for the scheduler (see its pending reason and queue position)
    SCHEDULED = "scheduled"  # placed by the scheduler; its replicas are about to start
    STARTING = "starting"  # replicas started, not all running yet
    RUNNING = "running"  # every placed replica runs
    SUCCEEDED = "succeeded"  # every replica exited with 0
    FAILED = "failed"  # a replica failed and no retry is left (or it ran past max_runtime)
    CANCELLED = "cancelled"  # a user cancelled it
    PREEMPTED = "preempted"  # stopped to make room for other work; goes back to pending once stopped
    LOST = "lost"  # the executor lost track of a replica and no retry is left
    STOPPED = "stopped"  # a notebook stopped by its user or culled when idle: no resources held; can start again

    def is_terminal(self) -> bool:
        """True for statuses a workload never leaves."""
        return self in TERMINAL_STATUSES

    def is_active(self) -> bool:
        """True while the workload has (or is about to have) replicas holding resources."""
        return self in (WorkloadStatus.SCHEDULED, WorkloadStatus.STARTING, WorkloadStatus.RUNNING)


TERMINAL_STATUSES = frozenset(
    {WorkloadStatus.SUCCEEDED, WorkloadStatus.FAILED, WorkloadStatus.CANCELLED, WorkloadStatus.LOST}
)

_S = WorkloadStatus
ALLOWED_TRANSITIONS: dict[WorkloadStatus, frozenset[WorkloadStatus]] = {
    _S.PENDING: frozenset({_S.SCHEDULED, _S.CANCELLED, _S.FAILED, _S.STOPPED}),
    _S.SCHEDULED: frozenset({_S.STARTING, _S.RUNNING, _S.PENDING, _S.FAILED, _S.CANCELLED, _S.PREEMPTED, _S.LOST,
                             _S.STOPPED}),
    _S.STARTING: frozenset({_S.RUNNING, _S.SUCCEEDED, _S.FAILED, _S.CANCELLED, _S.PREEMPTED, _S.LOST, _S.PENDING,
                            _S.STOPPED}),
    _S.RUNNING: frozenset({_S.SUCCEEDED, _S.FAILED, _S.CANCELLED, _S.PREEMPTED, _S.LOST, _S.PENDING, _S.STOPPED}),
    _S.STOPPED: frozenset({_S.PENDING, _S.CANCELLED}),
    _S.PREEMPTED: frozenset({_S.PENDING, _S.CANCELLED}),
    _S.SUCCEEDED: frozenset(),
    _S.FAILED: frozenset(),
    _S.CANCELLED: frozenset(),
    _S.LOST: frozenset(),
}


def parse_status(value: str, field_name: str = "status") -> WorkloadStatus:
    """The status named `value`; ValidationError listing the valid names otherwise."""
    try:
        return WorkloadStatus(value.strip().lower())
    except ValueError:
        names = ", ".join(s.value for s in WorkloadStatus)
        raise ValidationError(f"unknown status {value!r}; use one of {names}", field_name) from None


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """One status change: from, to, why and when (seconds since the epoch, passed in by the caller)."""

    from_status: WorkloadStatus
    to_status: WorkloadStatus
    reason: str
    at: float


class StatusHolder(Protocol):
    """Something with a workload status that records the changes `transition` hands it."""

    @property
    def current_status(self) -> WorkloadStatus:
        """The status now."""
        ...

    def record_status_event(self, event: StatusEvent) -> None:
        """Store `event`: set the status to `event.to_status` and keep the event in the history."""
        ...


def can_transition(current: WorkloadStatus, target: WorkloadStatus) -> bool:
    """True when the life cycle allows going from `current` to `target`."""
    return target in ALLOWED_TRANSITIONS[current]


def transition(holder: StatusHolder, target: WorkloadStatus, reason: str, at: float) -> StatusEvent:
    """Move `holder` to `target`, recording why. The only way a workload status changes.

    Raises InvalidTransitionError (nothing changed) when the life cycle does not allow the change, in
    particular when the workload is already in a terminal state; ValidationError when `reason` is empty.
    """
    if not reason.strip():
        raise ValidationError("a status change needs a reason", "reason")
    current = holder.current_status
    if not can_transition(current, target):
        if current.is_terminal():
            raise InvalidTransitionError(f"the workload already ended ({current}); it cannot become {target}")
        raise InvalidTransitionError(f"a workload cannot go from {current} to {target}")
    event = StatusEvent(current, target, reason.strip(), at)
    holder.record_status_event(event)
    return event
