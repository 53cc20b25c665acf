"""A run's start time when the reconciler never saw a replica running: one that started and ended between two
polls still leaves the workload with `started_at` (the replica's start when known, else its end), so `show`
says when it started; a run whose replicas never started keeps none. Driven one step at a time on a clock the
test sets (background workers off), over a real database."""

from __future__ import annotations

import pytest
from tests.integration.server.conftest import ServerFactory
from tests.support.servers import TestServer

from gpupool.domain.replicas import ReplicaState
from gpupool.executors.fake import FakeExecutor, ScriptedOutcome

STARTS_THEN_ENDS = ScriptedOutcome(starting_polls=1, running_polls=0)  # starting, then ended at the next poll
RUNS_ONE_POLL = ScriptedOutcome(running_polls=1)


class Clock:
    """A clock the test moves."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(1_000_000.0)


@pytest.fixture
def manual(server_factory: ServerFactory, fake: FakeExecutor, clock: Clock) -> TestServer:
    return server_factory(executor=fake, clock=clock, workers=False)


def _cycle(server: TestServer, clock: Clock, at: float) -> None:
    """One scheduling and reconciling pass at time `at`."""
    services = server.services
    assert services.scheduling_loop is not None and services.reconciler_loop is not None
    clock.now = at
    services.scheduling_loop.step()
    services.reconciler_loop.step()


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        (STARTS_THEN_ENDS, "succeeded"),
        (ScriptedOutcome(ReplicaState.FAILED, 3, starting_polls=1, running_polls=0), "failed"),
    ],
)
def test_a_replica_that_ended_between_two_polls_gives_its_run_a_start_time(
    manual: TestServer, fake: FakeExecutor, clock: Clock, outcome: ScriptedOutcome, status: str
) -> None:
    with manual.client() as client:
        wid = client.submit("command: x\nresources: {cpu: 1, memory: 1GiB}\n").workload.id
        fake.script(str(wid), outcome)
        _cycle(manual, clock, 1_000_010.0)  # bound, launched, polled: starting
        assert client.get_workload(wid).status == "starting"
        _cycle(manual, clock, 1_000_020.0)  # the next poll finds it ended; it was never seen running
        done = client.get_workload(wid)
    assert done.status == status
    assert done.started_at == 1_000_020.0 == done.finished_at  # its end: the best that is known


def test_a_gang_keeps_the_start_of_the_replica_that_was_seen_running(
    manual: TestServer, fake: FakeExecutor, clock: Clock
) -> None:
    with manual.client() as client:
        wid = client.submit("command: x\nreplicas: 2\nresources: {cpu: 1, memory: 1GiB}\n").workload.id
        fake.script(str(wid), RUNS_ONE_POLL, replica=0)  # running at the first poll, succeeded at the second
        fake.script(str(wid), STARTS_THEN_ENDS, replica=1)  # starting at the first poll, succeeded at the second
        _cycle(manual, clock, 1_000_010.0)
        assert client.get_workload(wid).status == "starting"  # not every replica runs yet
        _cycle(manual, clock, 1_000_020.0)
        done = client.get_workload(wid)
    assert done.status == "succeeded"
    assert done.started_at == 1_000_010.0  # when replica 0 was seen running, not the end


def test_a_run_whose_replicas_never_started_has_no_start_time(
    manual: TestServer, fake: FakeExecutor, clock: Clock
) -> None:
    with manual.client() as client:
        wid = client.submit("command: x\nresources: {cpu: 1, memory: 1GiB}\n").workload.id
        fake.script(
            str(wid),
            ScriptedOutcome(ReplicaState.FAILED, None, starting_polls=1, running_polls=0, message="image not found"),
        )
        _cycle(manual, clock, 1_000_010.0)
        _cycle(manual, clock, 1_000_020.0)
        done = client.get_workload(wid)
    assert done.status == "failed" and done.started_at is None
