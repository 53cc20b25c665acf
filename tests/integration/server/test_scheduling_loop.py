"""The scheduling loop and the reconciler driven one step at a time (background workers off), over a real
database: decisions applied in one transaction, capacity held by stopping replicas, restarts."""

from __future__ import annotations

import pytest
from tests.integration.server.conftest import ServerFactory
from tests.support.servers import TestServer

from gpupool.domain.resources import ReplicaRequest
from gpupool.executors.fake import RUN_FOREVER, FakeCluster, FakeExecutor
from gpupool.scheduler.placement.resource_fit import BinpackPolicy
from gpupool.scheduler.profile import SchedulerProfile
from gpupool.server.workers.scheduling import SchedulingLoop
from gpupool.store.orm import WorkloadRow

GPU_JOB = "name: {name}\nproject: {project}\ncommand: x\nresources: {{cpu: 1, memory: 1GiB, gpu: 1}}\n"


def steps(server: TestServer, rounds: int = 1) -> None:
    """Run scheduler then reconciler, `rounds` times."""
    services = server.services
    assert services.scheduling_loop is not None and services.reconciler_loop is not None
    for _ in range(rounds):
        services.scheduling_loop.step()
        services.reconciler_loop.step()


@pytest.fixture
def manual(server_factory: ServerFactory, fake: FakeExecutor) -> TestServer:
    return server_factory(executor=fake, gpus="4xA100-80GB", workers=False)


def test_one_step_binds_starts_and_runs(manual: TestServer, fake: FakeExecutor) -> None:
    with manual.client() as client:
        ids = [client.submit(GPU_JOB.format(name=f"j{k}", project="default")).workload.id for k in range(5)]
        assert all(client.get_workload(i).status == "pending" for i in ids)
        steps(manual)  # 4 fit on the 4 GPUs and start; the 5th waits, first in its queue
        statuses = [client.get_workload(i).status for i in ids]
        assert statuses == ["running"] * 4 + ["pending"]
        waiting = client.get_workload(ids[4])
        assert waiting.queue_position == 1 and waiting.pending_reason
    assert len(fake.launches) == 4


def test_stopping_replicas_hold_their_capacity_until_they_are_gone(manual: TestServer, fake: FakeExecutor) -> None:
    with manual.client() as client:
        big = client.submit("command: x\nresources: {gpu: 4}\n").workload.id
        steps(manual, 2)
        client.cancel(big)
        small = client.submit("command: x\nresources: {gpu: 1}\n").workload.id
        manual.services.scheduling_loop.step()  # type: ignore[union-attr]
        assert client.get_workload(small).status == "pending"  # big's replica has not stopped yet
        manual.services.reconciler_loop.step()  # type: ignore[union-attr]  # sends stop, sees it stopped
        steps(manual)
        assert client.get_workload(small).status in ("starting", "running")
        assert client.get_workload(big).replica_list[0].state == "stopped"


def test_a_restarted_server_launches_what_the_previous_one_scheduled(server_factory: ServerFactory) -> None:
    cluster = FakeCluster()
    first = server_factory(executor=FakeExecutor(cluster, default=RUN_FOREVER), workers=False)
    with first.client() as client:
        wid = client.submit("command: x\n").workload.id
    first.services.scheduling_loop.step()  # type: ignore[union-attr]  # bound, then the server "crashes"
    first.stop()
    second = server_factory(executor=FakeExecutor(cluster, default=RUN_FOREVER), home=first.settings.home)
    with second.client() as client:
        done = client.wait(wid, ["running"], timeout_s=10)
    assert done.attempt == 1 and len(cluster.replicas) == 1


def test_a_learning_policy_observes_each_submitted_replica_once(manual: TestServer) -> None:
    class Recording(BinpackPolicy):
        learns_target = True

        def __init__(self) -> None:
            super().__init__()
            self.seen: list[ReplicaRequest] = []

        def observe(self, request: ReplicaRequest) -> None:
            self.seen.append(request)

    policy = Recording()
    services = manual.services
    loop = SchedulingLoop(services.db, services.clock, SchedulerProfile(policy="binpack", min_runtime_s=0),
                          lambda _node, n: list(range(40000, 40000 + n)), policy=policy)
    with manual.client() as client:
        client.submit("command: x\nreplicas: 3\nresources: {gpu: 1}\n")
        loop.step()
        loop.step()
        assert len(policy.seen) == 3
        client.submit("command: x\nresources: {gpu: 0.5}\n")
        loop.step()
    assert len(policy.seen) == 4 and policy.seen[-1].gpu.share_milli == 500


def test_reclaiming_preempts_no_more_than_needed(manual: TestServer) -> None:
    with manual.client() as client:
        for name in ("a", "b"):
            client.create_project(name)
            client.update_queue(name, guaranteed={"gpu": 2, "cpu": 2, "memory": "8GiB"})
        a_jobs = [client.submit(GPU_JOB.format(name=f"a{k}", project="a")).workload.id for k in range(4)]
        steps(manual, 2)
        loop = manual.services.scheduling_loop
        assert loop is not None
        client.submit(GPU_JOB.format(name="b0", project="b"))
        loop.step()  # b0 preempts one of a's jobs, which has not stopped yet
        client.submit(GPU_JOB.format(name="b1", project="b"))
        loop.step()  # b1 needs one more victim, not two
        steps(manual, 4)
        preempted = [w for w in a_jobs if client.get_workload(w).preemptions]
    assert len(preempted) == 2


def test_a_fair_share_victim_remembers_its_preemptor_and_never_preempts_it_back(
        server_factory: ServerFactory, fake: FakeExecutor) -> None:
    server = server_factory(executor=fake, gpus="4xA100-80GB", workers=False, fair_share_preemption=True,
                            min_runtime_s=0)
    db = server.services.db
    with server.client() as client:
        for name in ("a", "b"):
            client.create_project(name)
        a_jobs = [client.submit(GPU_JOB.format(name=f"a{k}", project="a")).workload.id for k in range(3)]
        client.submit(GPU_JOB.format(name="b1", project="b"))
        steps(server, 2)  # a holds 3 of 4 GPUs, b one
        b0 = client.submit(GPU_JOB.format(name="b0", project="b")).workload.id
        with db.session() as session:  # as if a0 had preempted b0 for fair share before
            row = session.get(WorkloadRow, int(b0))
            assert row is not None
            row.fair_share_preempted_by = [int(a_jobs[0])]
        steps(server, 4)  # b0 takes a GPU of a's for fair share: a0 would be first (same start, lowest id)
        taken = [w for w in a_jobs if client.get_workload(w).preemptions]
        assert taken == [a_jobs[1]]
        assert any("fair share" in e.reason for e in client.get_workload(a_jobs[1]).events)
        assert client.get_workload(b0).status == "running"
    with db.session() as session:  # the requeued victim remembers b0, in the store: restarts keep it
        victim = session.get(WorkloadRow, int(a_jobs[1]))
        assert victim is not None and victim.status == "pending"
        assert victim.fair_share_preempted_by == [int(b0)]


def test_a_reclaims_victim_remembers_its_preemptor_too(server_factory: ServerFactory, fake: FakeExecutor) -> None:
    server = server_factory(executor=fake, gpus="4xA100-80GB", workers=False, fair_share_preemption=True,
                            min_runtime_s=0)
    with server.client() as client:
        for name in ("a", "b"):
            client.create_project(name)
        client.update_queue("b", guaranteed={"gpu": 2})
        a_jobs = [client.submit(GPU_JOB.format(name=f"a{k}", project="a")).workload.id for k in range(4)]
        steps(server, 2)  # a borrows all 4 GPUs
        b0 = client.submit(GPU_JOB.format(name="b0", project="b")).workload.id
        steps(server, 4)  # b0 reclaims one of b's guaranteed GPUs
        taken = [w for w in a_jobs if client.get_workload(w).preemptions]
        assert len(taken) == 1 and client.get_workload(b0).status == "running"
        assert any("reclaimed" in e.reason for e in client.get_workload(taken[0]).events)
    with server.services.db.session() as session:  # requeued, it never takes b0 back for fair share
        victim = session.get(WorkloadRow, int(taken[0]))
        assert victim is not None and victim.status == "pending"
        assert victim.fair_share_preempted_by == [int(b0)]


def test_a_head_waiting_past_hold_after_s_holds_freed_capacity_until_it_starts(
        server_factory: ServerFactory, fake: FakeExecutor) -> None:
    server = server_factory(executor=fake, gpus="4xA100-80GB", workers=False, hold_after_s=0)
    with server.client() as client:
        running = [client.submit(GPU_JOB.format(name=f"r{k}", project="default")).workload.id for k in range(4)]
        steps(server, 2)  # four jobs without a max_runtime hold the 4 GPUs
        big = client.submit("name: big\ncommand: x\nresources: {cpu: 1, memory: 1GiB, gpu: 4}\n").workload.id
        small = client.submit(GPU_JOB.format(name="small", project="default")).workload.id
        steps(server)
        assert "holding its capacity on" in (client.get_workload(big).pending_reason or "")
        client.cancel(running[0])
        steps(server, 3)  # a GPU is free, but it is held for big: small, behind it, does not take it
        assert client.get_workload(small).status == "pending"
        assert "held for" in (client.get_workload(small).pending_reason or "")
        for workload_id in running[1:]:
            client.cancel(workload_id)
        steps(server, 3)
        assert client.get_workload(big).status in ("starting", "running")
        assert client.get_workload(small).status == "pending"
