"""The workload life cycle: allowed transitions, terminal states, and the one door for changes."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from gpupool.domain.errors import InvalidTransitionError, ValidationError
from gpupool.domain.status import (
    ALLOWED_TRANSITIONS,
    TERMINAL_STATUSES,
    StatusEvent,
    WorkloadStatus,
    can_transition,
    parse_status,
    transition,
)

S = WorkloadStatus


@dataclass
class Holder:
    status: WorkloadStatus = S.PENDING
    events: list[StatusEvent] = field(default_factory=list)

    @property
    def current_status(self) -> WorkloadStatus:
        return self.status

    def record_status_event(self, event: StatusEvent) -> None:
        self.status = event.to_status
        self.events.append(event)


def test_happy_path_records_one_event_per_change() -> None:
    h = Holder()
    for target in (S.SCHEDULED, S.STARTING, S.RUNNING, S.SUCCEEDED):
        transition(h, target, f"to {target}", at=1.0)
    assert h.status == S.SUCCEEDED
    assert [(e.from_status, e.to_status) for e in h.events] == [
        (S.PENDING, S.SCHEDULED), (S.SCHEDULED, S.STARTING), (S.STARTING, S.RUNNING), (S.RUNNING, S.SUCCEEDED)]
    assert h.events[-1].reason == "to succeeded"


def test_preempted_goes_back_to_pending_with_the_same_holder() -> None:
    h = Holder(S.RUNNING)
    transition(h, S.PREEMPTED, "reclaimed by queue b", at=2.0)
    transition(h, S.PENDING, "requeued after preemption", at=3.0)
    assert h.status == S.PENDING
    assert len(h.events) == 2


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATUSES))
def test_terminal_states_are_never_left(terminal: WorkloadStatus) -> None:
    assert terminal.is_terminal()
    assert ALLOWED_TRANSITIONS[terminal] == frozenset()
    for target in WorkloadStatus:
        h = Holder(terminal)
        with pytest.raises(InvalidTransitionError, match="already ended"):
            transition(h, target, "try", at=0.0)
        assert h.status == terminal and h.events == []


def test_illegal_transition_changes_nothing() -> None:
    h = Holder(S.PENDING)
    with pytest.raises(InvalidTransitionError, match="from pending to running"):
        transition(h, S.RUNNING, "skip ahead", at=0.0)
    assert h.status == S.PENDING and h.events == []


def test_a_reason_is_required() -> None:
    with pytest.raises(ValidationError, match="reason"):
        transition(Holder(), S.CANCELLED, "  ", at=0.0)


def test_every_non_terminal_status_can_be_cancelled_or_reach_an_end() -> None:
    for status in WorkloadStatus:
        if not status.is_terminal():
            assert can_transition(status, S.CANCELLED), status
    assert {s for s in WorkloadStatus if s.is_active()} == {S.SCHEDULED, S.STARTING, S.RUNNING}


def test_parse_status() -> None:
    assert parse_status(" Running ") == S.RUNNING
    with pytest.raises(ValidationError, match="use one of pending"):
        parse_status("runing")
