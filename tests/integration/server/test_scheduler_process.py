"""The scheduler in a process of its own (`scheduler_process`, server/workers/scheduler_process.py): it binds
what the API accepts, reports its passes and CPU, is started again when it dies (random kills among submits and
cancels never overcommit a card nor start a job twice), ends with its server (a clean stop or a kill -9),
answers the submissions' hold with its real lag, hands its reservations to the server's dry runs, and gives the
loop back to a thread of the server when it cannot start."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from tests.support.processes import ServerProcess, alive, worker_child
from tests.support.servers import TestServer, server_settings, start_server, wait_until

from gpupool.api.schemas import WorkloadDetail
from gpupool.executors.fake import RUN_FOREVER, FakeExecutor
from gpupool.scheduler.profile import SchedulerProfile
from gpupool.server.app import build_services
from gpupool.server.workers.loop import IntervalWorker
from gpupool.server.workers.scheduler_process import SchedulerConfig, SchedulerProcess
from gpupool.server.workers.worker_process import QUICK_ENDS_BEFORE_FALLBACK
from gpupool.store.db import Database
from gpupool.store.orm import ReplicaRow
from gpupool.store.repos.workloads import LIVE_REPLICA_STATES

SPEC = "name: {name}\ncommand: x\nresources: {{cpu: 100m, memory: 64MiB}}\n"
FOUR_GPUS = "name: {name}\ncommand: x\nresources: {{cpu: 100m, memory: 64MiB, gpu: 4}}\nmax_runtime: 1h\n"


@pytest.fixture
def split_server(tmp_path: Path, database_url: str) -> Iterator[TestServer]:
    """A server with its own clock (so the scheduler may leave the process), 4 A100s, replicas that run on."""
    settings = server_settings(tmp_path / "home", database_url, scheduler_process=True, gpus="4xA100-80GB")
    server = start_server(settings, FakeExecutor(default=RUN_FOREVER), clock=None)
    yield server
    server.stop()


def _scheduler(server: TestServer) -> SchedulerProcess:
    scheduler = server.services.scheduler
    assert isinstance(scheduler, SchedulerProcess), scheduler
    return scheduler


def _running(server: TestServer, ids: list[int]) -> bool:
    with server.client() as client:
        return all(client.get_workload(i).status == "running" for i in ids)


def test_the_scheduler_process_binds_what_the_api_accepts_and_ends_with_its_server(
        split_server: TestServer) -> None:
    scheduler = _scheduler(split_server)
    pid = wait_until(lambda: scheduler.pid, what="the scheduler process")
    assert pid != os.getpid()
    with split_server.client() as client:
        ids = [client.submit(SPEC.format(name=f"j{k}")).workload.id for k in range(5)]
        wait_until(lambda: _running(split_server, ids), timeout_s=20, what="all running")
        exported = client.prometheus_metrics()
    # the child's passes and CPU, as the thread's were
    passes = next(line for line in exported.splitlines() if line.startswith('gpupool_worker_passes_total{worker="sch'))
    assert 0 < float(passes.rsplit(" ", 1)[1]) <= scheduler.steps  # (a pass may end after the scrape)
    assert scheduler.cpu_s > 0 and scheduler.failures == 0
    assert scheduler.restarts == 0 and not scheduler.in_fallback  # the child did it, not the fallback thread
    split_server.stop()
    wait_until(lambda: not alive(pid), timeout_s=10, what="the scheduler process ended with the server")


def test_a_scheduler_process_killed_in_a_burst_is_started_again_and_nothing_is_doubled(
        split_server: TestServer) -> None:
    scheduler = _scheduler(split_server)
    fake = split_server.services.executor
    assert isinstance(fake, FakeExecutor)
    first = wait_until(lambda: scheduler.pid, what="the scheduler process")
    wait_until(lambda: scheduler.steps > 0, what="a first pass")
    with split_server.client() as client:
        ids = [client.submit(SPEC.format(name=f"j{k}")).workload.id for k in range(12)]
        os.kill(first, signal.SIGKILL)  # while it binds the burst (or before: either way it must not double)
        ids += [client.submit(SPEC.format(name=f"k{k}")).workload.id for k in range(12)]
    steps = scheduler.steps
    second = wait_until(lambda: scheduler.pid not in (None, first) and scheduler.pid, timeout_s=15,
                        what="another scheduler process")
    assert scheduler.restarts == 1 and not alive(first) and second != first
    wait_until(lambda: _running(split_server, ids), timeout_s=30, what="all bound by the new process")
    assert scheduler.steps >= steps  # the counters of the killed child are kept
    with split_server.client() as client:
        assert all(len(client.get_workload(i).replica_list) == 1 for i in ids)  # one replica row each
    started = sorted(int(launch.workload_id) for launch in fake.launches)
    assert started == sorted(ids)  # each started once


def test_the_lag_is_the_oldest_wake_the_child_has_not_answered(split_server: TestServer) -> None:
    scheduler = _scheduler(split_server)
    pid = wait_until(lambda: scheduler.pid, what="the scheduler process")
    wait_until(lambda: scheduler.lag_s() == 0.0, what="no wake waiting")
    os.kill(pid, signal.SIGSTOP)  # the child answers nothing meanwhile
    try:
        scheduler.wake()
        time.sleep(0.3)
        assert scheduler.lag_s() >= 0.3
        assert scheduler.wait_for_lag_below(0.1, 0.2) >= 0.2  # waited it all: the lag stayed
        # a child that reads nothing never blocks a waker: far more wakes than its socket would hold
        wakes = threading.Thread(target=lambda: [scheduler.wake() for _ in range(50_000)])
        wakes.start()
        wakes.join(30)
        assert not wakes.is_alive()
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: scheduler.lag_s() == 0.0, timeout_s=10, what="the wake answered")
    assert scheduler.wait_for_lag_below(0.5, 5.0) < 0.5  # answered again (a new wake waits a pass at most)


def test_the_childs_reservations_reach_the_servers_dry_runs(split_server: TestServer) -> None:
    loop = split_server.services.scheduling_loop
    assert loop is not None
    with split_server.client() as client:
        first = client.submit(FOUR_GPUS.format(name="first")).workload.id
        wait_until(lambda: _running(split_server, [first]), timeout_s=20, what="the first 4-GPU job running")
        second = client.submit(FOUR_GPUS.format(name="second")).workload.id
        # the child reserves the 4 GPUs for `second` at the end of `first`'s max_runtime, and says so
        held = wait_until(lambda: loop.held_reservations().get(str(second)), timeout_s=10,
                          what="the reservation in the server's loop")
        assert {p.node for p in held.placements} == {"node"}
        answer = client.dry_run(FOUR_GPUS.format(name="third"))
    assert answer.verdict == "waits", answer  # behind `second`: the server's own loop answers dry runs


def test_a_scheduler_process_ends_when_its_server_is_killed(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "home", ["--cpus", "4", "--memory", "8GiB"],
                           extra_env={"GPUPOOL_SCHEDULER_PROCESS": "true", "GPUPOOL_EXECUTOR": "fake"}).start()
    assert server.process is not None
    parent = server.process.pid
    pid = wait_until(lambda: worker_child(parent, b"scheduler_process"), timeout_s=20,
                     what="the server's scheduler process")
    server.kill()  # kill -9: no shutdown code runs in the server
    wait_until(lambda: not alive(pid), timeout_s=10, what="the orphaned scheduler process exited")


def test_a_server_given_a_clock_keeps_its_scheduler_in_its_process(tmp_path: Path) -> None:
    settings = server_settings(tmp_path / "home", f"sqlite:///{tmp_path / 'db.sqlite'}", scheduler_process=True)
    services = build_services(settings, FakeExecutor(), clock=time.time)
    try:
        assert isinstance(services.scheduler, IntervalWorker)
    finally:
        services.db.dispose()


def test_a_scheduler_process_stopped_as_it_starts_ends(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    db = Database(url)
    db.migrate()
    db.dispose()
    scheduler = SchedulerProcess(SchedulerConfig(url, SchedulerProfile(), 1.0, 0.1, "warning"), on_change=lambda: None)
    for _ in range(3):  # at once, and while the child is still importing
        scheduler.start()
        began = time.monotonic()
        scheduler.stop(timeout_s=20)
        assert time.monotonic() - began < 20  # the child ended without being killed at the timeout
        assert scheduler.pid is None


def test_children_that_cannot_start_leave_the_loop_to_a_thread_of_the_server(tmp_path: Path) -> None:
    steps: list[float] = []
    fallback = IntervalWorker("scheduler", lambda: steps.append(time.monotonic()), 60.0)
    config = SchedulerConfig("nosuchdb://nowhere", SchedulerProfile(), 1.0, 0.1, "error")  # the child exits
    scheduler = SchedulerProcess(config, on_change=lambda: None, fallback=fallback)
    scheduler.start()
    try:
        scheduler.wake()
        wait_until(lambda: scheduler.in_fallback, timeout_s=60, what="the fallback after three failed starts")
        assert scheduler.restarts == QUICK_ENDS_BEFORE_FALLBACK - 1 and scheduler.pid is None
        wait_until(lambda: steps, what="the thread's first step")  # it answers the wakes that waited
        before = len(steps)
        scheduler.wake()  # wakes and the lag now go to the thread
        wait_until(lambda: len(steps) > before, what="a woken step of the thread")
        assert scheduler.wait_for_lag_below(0.5, 5.0) < 5.0 and scheduler.steps == len(steps)
    finally:
        scheduler.stop(timeout_s=10)


def _fullest_card(db: Database) -> int:
    """The most GPU milli that the live replicas in the store hold on one card."""
    with db.session(write=False) as session:
        rows = session.scalars(select(ReplicaRow).where(ReplicaRow.state.in_(LIVE_REPLICA_STATES))).all()
    load: Counter[tuple[str, int]] = Counter()
    for row in rows:
        for gpu in row.placement.get("gpus", []):
            load[(row.node, int(gpu["index"]))] += int(gpu["milli"])
    return max(load.values(), default=0)


@pytest.mark.parametrize("seed", [11, 29])
def test_random_submits_cancels_and_kills_of_the_scheduler_process_never_overcommit_or_double(
        split_server: TestServer, database_url: str, seed: int) -> None:
    rng = random.Random(seed)
    scheduler = _scheduler(split_server)
    fake = split_server.services.executor
    assert isinstance(fake, FakeExecutor)
    wait_until(lambda: scheduler.pid, what="the scheduler process")
    db = Database(database_url)
    ids: list[int] = []
    cancelled: set[int] = set()
    fullest = kills = 0
    try:
        with split_server.client() as client:
            for turn in range(10):  # 4 cards; whole, half and quarter cards; jobs run until cancelled
                for _ in range(rng.randint(1, 4)):
                    gpu = rng.choice(["0.25", "0.5", "1", "2"])
                    ids.append(client.submit(f"name: t{turn}-{len(ids)}\ncommand: x\n"
                                             f"resources: {{cpu: 100m, memory: 64MiB, gpu: {gpu}}}\n").workload.id)
                for wid in rng.sample(ids, k=min(len(ids), rng.randint(0, 2))):
                    if wid not in cancelled:
                        client.cancel(wid)
                        cancelled.add(wid)
                pid = scheduler.pid
                if pid is not None and rng.random() < 0.5:
                    os.kill(pid, signal.SIGKILL)  # mid-pass or between passes: either must leave the store whole
                    kills += 1
                time.sleep(rng.uniform(0.0, 0.4))
                fullest = max(fullest, _fullest_card(db))

            def settled() -> dict[int, WorkloadDetail] | None:  # the last kill's successor bound what fits
                found = {wid: client.get_workload(wid) for wid in ids}
                return found if all(d.status in ("running", "pending", "cancelled") for d in found.values()) else None

            final = wait_until(settled, timeout_s=30, what="every workload running, pending or cancelled")
            fullest = max(fullest, _fullest_card(db))
    finally:
        db.dispose()
    assert kills > 0 and scheduler.restarts == kills and not scheduler.in_fallback
    assert fullest <= 1000  # no card ever held more than itself
    started = Counter(int(launch.workload_id) for launch in fake.launches)
    assert all(count == 1 for count in started.values()), started  # none started twice
    for wid, detail in final.items():
        assert len(detail.replica_list) <= 1  # one replica row per run at most
        if wid not in cancelled:  # the rest runs, or waits with the reason why
            assert detail.status == "running" or (detail.status == "pending" and detail.message), detail
