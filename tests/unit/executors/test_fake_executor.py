"""The fake executor: scripted outcomes counted in polls, steering, idempotency, shared state across
instances (a simulated server restart)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpupool.executors.base import Capability, ExecutorError, ReplicaLaunch, ReplicaState, ReplicaStatus
from gpupool.executors.fake import RUN_FOREVER, FakeCluster, FakeExecutor, ScriptedOutcome, fail


def launch(workload_id: str = "w1", replica: int = 0, attempt: int = 0) -> ReplicaLaunch:
    return ReplicaLaunch(workload_id, replica, "worker", "python train.py", {}, Path("/tmp"), Path("/tmp"),
                         attempt=attempt)


def states(executor: FakeExecutor, handle: dict[str, object], polls: int) -> list[ReplicaState]:
    return [executor.poll(handle).state for _ in range(polls)]


def test_default_outcome_runs_one_poll_then_succeeds() -> None:
    fake = FakeExecutor()
    handle = fake.start(launch())
    assert states(fake, handle, 3) == [ReplicaState.RUNNING, ReplicaState.SUCCEEDED, ReplicaState.SUCCEEDED]
    assert fake.poll(handle).exit_code == 0


def test_scripted_outcome_per_workload_and_per_replica() -> None:
    fake = FakeExecutor()
    fake.script("w1", ScriptedOutcome(starting_polls=1, running_polls=2))
    fake.script("w1", fail(exit_code=3, running_polls=0), replica=1)
    first, second = fake.start(launch(replica=0)), fake.start(launch(replica=1))
    assert states(fake, first, 4) == [ReplicaState.STARTING, ReplicaState.RUNNING, ReplicaState.RUNNING,
                                      ReplicaState.SUCCEEDED]
    assert fake.poll(second) == ReplicaStatus(ReplicaState.FAILED, 3)


def test_run_forever_until_finished_from_outside() -> None:
    fake = FakeExecutor(default=RUN_FOREVER)
    handle = fake.start(launch())
    assert states(fake, handle, 5) == [ReplicaState.RUNNING] * 5
    assert fake.running() == ["w1/0/0"]
    fake.finish("w1", 0, exit_code=2)
    assert fake.poll(handle) == ReplicaStatus(ReplicaState.FAILED, 2, "exit code 2")
    assert fake.running() == []


def test_stop_ends_with_sigterm_or_sigkill_code_and_is_recorded() -> None:
    fake = FakeExecutor(default=RUN_FOREVER)
    fake.script("w2", ScriptedOutcome(running_polls=None, ignores_sigterm=True))
    polite, stubborn = fake.start(launch("w1")), fake.start(launch("w2"))
    fake.stop(polite, grace_s=5)
    fake.stop(stubborn)
    fake.stop(polite)  # idempotent
    assert fake.poll(polite) == ReplicaStatus(ReplicaState.STOPPED, 143, "stopped")
    assert fake.poll(stubborn).exit_code == 137
    assert fake.stops == [("w1/0/0", 5), ("w2/0/0", 10.0)]


def test_lose_makes_a_replica_lost() -> None:
    fake = FakeExecutor(default=RUN_FOREVER)
    handle = fake.start(launch())
    fake.lose("w1", 0)
    assert fake.poll(handle).state == ReplicaState.LOST
    with pytest.raises(KeyError):
        fake.lose("w9", 0)


def test_start_is_idempotent_and_attempts_are_distinct() -> None:
    fake = FakeExecutor()
    assert fake.start(launch()) == fake.start(launch())
    assert fake.start(launch(attempt=1)) != fake.start(launch())
    assert [(x.workload_id, x.attempt) for x in fake.launches] == [("w1", 0), ("w1", 1)]


def test_fail_next_start_raises_once() -> None:
    fake = FakeExecutor()
    fake.fail_next_start("node n1 is gone")
    with pytest.raises(ExecutorError, match="node n1 is gone"):
        fake.start(launch())
    assert fake.poll(fake.start(launch())).state == ReplicaState.RUNNING


def test_a_new_instance_on_the_same_cluster_reattaches() -> None:
    cluster = FakeCluster()
    before = FakeExecutor(cluster, default=RUN_FOREVER)
    handle = before.start(launch())
    after = FakeExecutor(cluster)
    assert after.poll(handle).state == ReplicaState.RUNNING
    assert after.start(launch()) == handle
    assert after.launches == []  # nothing new was started


def test_logs_and_unknown_handles() -> None:
    fake = FakeExecutor()
    fake.script("w1", ScriptedOutcome(logs=("a", "b", "c")))
    handle = fake.start(launch())
    assert list(fake.logs(handle)) == ["a", "b", "c"]
    assert list(fake.logs(handle, tail=2)) == ["b", "c"]
    assert list(fake.logs(handle, tail=0)) == []
    assert list(fake.logs(handle, follow=True)) == ["a", "b", "c"]
    unknown = {"executor": "fake", "id": "nope"}
    assert fake.poll(unknown).state == ReplicaState.LOST
    assert list(fake.logs(unknown)) == []
    fake.stop(unknown)


def test_capabilities_are_declared_and_configurable() -> None:
    assert Capability.REATTACH in FakeExecutor().capabilities
    assert FakeExecutor(capabilities=frozenset()).capabilities == frozenset()
