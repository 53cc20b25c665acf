"""Draining service replicas pass by pass: a real server's store with its workers off, each scheduler,
reconciler and autoscaler pass driven here with a manual clock, the fake executor playing the processes.

A preempted replica takes no new request, keeps its requests in flight, and is stopped once they finished
(or after the drain timeout); then the preemptor starts. A restart between the preemption and the stop
stops it at once (nothing is in flight through a fresh gateway). An administrator's node drain drains it the
same way; a rolling update's drain has the same bound.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import select
from tests.support.databases import temporary_postgres_database
from tests.support.servers import ManualClock, TestServer, server_settings, start_server

from gpupool.client.http import Client
from gpupool.client.services import update_service
from gpupool.executors.fake import RUN_FOREVER, FakeExecutor
from gpupool.server.endpoints import stored_endpoints, with_ready
from gpupool.server.gateway import Backend, Gateway
from gpupool.server.workers.autoscaler import Autoscaler
from gpupool.store.orm import ReplicaRow

DRAIN_S = 30  # the drain timeout of these tests (the default is 60 s; any value shows the bound)
LIVE = ("pending", "scheduled", "starting", "running", "preempted")


@pytest.fixture(params=["sqlite", "postgresql"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[TestServer, Client, ManualClock,
                                                                            FakeExecutor]]:
    """A server with one A100, its workers off, on a fresh database (SQLite, or a throw-away PostgreSQL)."""
    with ExitStack() as stack:
        url = f"sqlite:///{tmp_path / 'gpupool.db'}" if request.param == "sqlite" \
            else stack.enter_context(temporary_postgres_database())
        clock = ManualClock()
        executor = FakeExecutor(default=RUN_FOREVER)
        server = start_server(server_settings(tmp_path / "home", url, workers=False, gpus="1xA100-80GB",
                                              gpu_mode="exclusive", service_drain_timeout_s=DRAIN_S),
                              executor, clock=clock)
        stack.callback(server.stop)
        with server.client() as admin:
            yield server, admin, clock, executor


class Driver:
    """Runs the server's workers one pass at a time, as the server would (scheduler, reconciler, autoscaler);
    the fake executor's replicas listen nowhere, so a running replica's endpoint is marked ready here and the
    autoscaler's HTTP readiness probe answers yes."""

    def __init__(self, server: TestServer, clock: ManualClock) -> None:
        self.services = server.services
        self.gateway = Gateway()
        self.clock = clock
        self.autoscaler = self.new_autoscaler()

    def new_autoscaler(self) -> Autoscaler:
        """A fresh autoscaler and gateway, as after a restart of the server."""
        self.gateway = Gateway()
        self.autoscaler = Autoscaler(self.services.db, self.clock, self.gateway, self.services.feasibility,
                                     probe=lambda *_: True, drain_timeout_s=DRAIN_S)
        return self.autoscaler

    def passes(self, count: int = 3) -> None:
        for _ in range(count):
            self.services.scheduling_loop.step()  # type: ignore[union-attr]
            self.services.reconciler_loop.step()  # type: ignore[union-attr]
            self._mark_running_endpoints_ready()
            self.autoscaler.step()

    def _mark_running_endpoints_ready(self) -> None:
        with self.services.db.session() as session:
            for replica in session.scalars(select(ReplicaRow).where(ReplicaRow.state == "running")):
                names = {e.name for e in stored_endpoints(replica.endpoints) if e.host and not e.ready}
                if names and replica.endpoints is not None:
                    replica.endpoints = with_ready(replica.endpoints, names)


def spec(**fields: Any) -> dict[str, Any]:
    return {"kind": "service", "name": "svc", "command": "serve --port $PORT", "models": ["m"],
            "priority": "low", "replicas": {"min": 1, "max": 1},
            "resources": {"cpu": 0.1, "memory": "64MiB", "gpu": 1}} | fields


URGENT = {"name": "urgent", "command": "train", "priority": "high",
          "resources": {"cpu": 0.1, "memory": "64MiB", "gpu": 1}}


def live_children(admin: Client, service_id: int) -> list[Any]:
    return [w for w in admin.list_workloads(limit=1000).items if w.parent_id == service_id and w.status in LIVE]


def reasons(admin: Client, workload_id: int) -> list[str]:
    return [e.reason for e in admin.get_workload(workload_id).events]


def serving_with_a_request_in_flight(admin: Client, driver: Driver) -> tuple[int, int, Backend]:
    """A service with one ready replica (on the only GPU) carrying one long request; (service, replica, the
    request's backend)."""
    sid = admin.submit(spec()).workload.id
    driver.passes(4)  # submitted, placed, started, running and ready, routed
    (replica,) = live_children(admin, sid)
    assert replica.status == "running" and admin.get_workload(sid).status == "running"
    backend = driver.gateway.acquire(sid)
    assert backend is not None and backend.workload_id == replica.id
    return sid, replica.id, backend


def test_a_preempted_replica_finishes_its_requests_then_stops_and_the_preemptor_starts(setup: Any) -> None:
    server, admin, clock, executor = setup
    driver = Driver(server, clock)
    sid, replica, backend = serving_with_a_request_in_flight(admin, driver)
    job = admin.submit(URGENT).workload.id
    driver.passes(2)
    assert admin.get_workload(replica).status == "preempted"
    assert executor.stops == []  # not stopped: its request in flight goes on
    assert driver.gateway.acquire(sid) is None  # no new request is sent to it
    assert admin.get_workload(job).status == "pending"
    assert admin.get_workload(sid).status == "pending"  # no replica serves now
    clock.advance(DRAIN_S - 1)
    driver.passes(2)
    assert executor.stops == [] and admin.get_workload(job).status == "pending"  # still within the bound
    driver.gateway.release(sid, backend)  # the long request ended
    driver.passes(3)
    assert len(executor.stops) == 1
    assert "stopping: drained after preemption" in reasons(admin, replica)
    assert admin.get_workload(replica).status == "pending"  # requeued like any preempted workload
    assert admin.get_workload(job).status == "running"  # the preemptor got the GPU


def test_the_drain_of_a_preempted_replica_is_bounded_by_the_timeout(setup: Any) -> None:
    server, admin, clock, executor = setup
    driver = Driver(server, clock)
    _, replica, _ = serving_with_a_request_in_flight(admin, driver)
    job = admin.submit(URGENT).workload.id
    driver.passes(2)
    clock.advance(DRAIN_S - 1)
    driver.passes(1)
    assert executor.stops == []
    clock.advance(1)  # the request is still in flight after the drain timeout
    driver.passes(3)
    assert len(executor.stops) == 1
    assert any("1 request(s) still in flight after 30s (drain timeout)" in r for r in reasons(admin, replica))
    assert admin.get_workload(job).status == "running"


def test_a_restart_after_a_preemption_stops_the_replica_at_once(setup: Any) -> None:
    server, admin, clock, executor = setup
    driver = Driver(server, clock)
    serving_with_a_request_in_flight(admin, driver)
    job = admin.submit(URGENT).workload.id
    driver.services.scheduling_loop.step()  # type: ignore[union-attr]  # preempted; then the server "dies"
    assert executor.stops == []
    driver.new_autoscaler()  # a restarted server: its gateway has nothing in flight, so nothing to wait for
    driver.passes(3)
    assert len(executor.stops) == 1 and admin.get_workload(job).status == "running"


def test_a_rolling_update_drains_the_old_replica_within_the_timeout(setup: Any) -> None:
    server, admin, clock, _ = setup
    driver = Driver(server, clock)
    cpu_only = {"cpu": 0.1, "memory": "64MiB"}
    sid = admin.submit(spec(resources=cpu_only)).workload.id
    driver.passes(4)
    (old,) = live_children(admin, sid)
    backend = driver.gateway.acquire(sid)
    assert backend is not None and backend.workload_id == old.id
    update_service(admin, "svc", yaml.safe_dump(spec(resources=cpu_only, env={"REVISION": "2"})))
    driver.passes(4)  # the new replica starts and is ready; the old one drains
    assert old.id in driver.gateway.draining() and admin.get_workload(old.id).status == "running"
    clock.advance(DRAIN_S - 1)
    driver.passes(1)
    assert admin.get_workload(old.id).status == "running"  # its request may still finish
    clock.advance(1)
    driver.passes(1)
    assert admin.get_workload(old.id).status == "cancelled"
    assert any("1 request(s) still in flight after 30s (drain timeout)" in r for r in reasons(admin, sid))
    assert [c.name for c in live_children(admin, sid)] == ["svc-r2"]


def test_a_node_drain_drains_a_service_replica_before_stopping_it(setup: Any) -> None:
    server, admin, clock, executor = setup
    driver = Driver(server, clock)
    sid, replica, backend = serving_with_a_request_in_flight(admin, driver)
    answer = httpx.post(f"{server.url}/api/v1/nodes/node/drain", timeout=30,
                        headers={"authorization": f"Bearer {server.admin_token}"})
    assert answer.status_code == 200 and answer.json()["preempted"] == [replica]
    driver.passes(2)
    assert admin.get_workload(replica).status == "preempted" and executor.stops == []
    assert driver.gateway.acquire(sid) is None
    driver.gateway.release(sid, backend)
    driver.passes(2)
    assert len(executor.stops) == 1 and "stopping: drained after preemption" in reasons(admin, replica)
