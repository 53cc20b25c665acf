"""The autoscaler pass by pass, on a real server's store with its workers off (so each pass is driven here,
with a manual clock): level-triggered decisions that a restart does not double, the scale-down delay, a
held request waking a service, a cancelled service taking its replicas with it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from tests.support.databases import temporary_postgres_database
from tests.support.servers import ManualClock, TestServer, server_settings, start_server, wait_until

from gpupool.client.http import Client
from gpupool.executors.fake import RUN_FOREVER, FakeExecutor
from gpupool.server.gateway import Gateway
from gpupool.server.workers.autoscaler import Autoscaler

LIVE = ("pending", "scheduled", "starting", "running")


@pytest.fixture(params=["sqlite", "postgresql"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[TestServer, Client, ManualClock]]:
    """A server with its workers off on a fresh database (SQLite, or a throw-away PostgreSQL database)."""
    with ExitStack() as stack:
        url = f"sqlite:///{tmp_path / 'gpupool.db'}" if request.param == "sqlite" \
            else stack.enter_context(temporary_postgres_database())
        clock = ManualClock()
        server = start_server(server_settings(tmp_path / "home", url, workers=False),
                              FakeExecutor(default=RUN_FOREVER), clock=clock)
        stack.callback(server.stop)
        with server.client() as admin:
            yield server, admin, clock


def scaler(server: TestServer, clock: ManualClock, gateway: Gateway | None = None) -> Autoscaler:
    services = server.services
    return Autoscaler(services.db, clock, gateway or Gateway(), services.feasibility, probe=lambda *_: False)


def live_children(admin: Client, service_id: int) -> list[Any]:
    return [w for w in admin.list_workloads(limit=1000).items if w.parent_id == service_id and w.status in LIVE]


def spec(**fields: Any) -> dict[str, Any]:
    return {"kind": "service", "name": "svc", "command": "serve --port $PORT", "models": ["m"],
            "resources": {"cpu": 0.1, "memory": "64MiB"}} | fields


def test_min_replicas_are_kept_and_a_restart_does_not_double_them(setup: Any) -> None:
    server, admin, clock = setup
    sid = admin.submit(spec(replicas={"min": 2, "max": 4})).workload.id
    scaler(server, clock).step()
    first = live_children(admin, sid)
    assert len(first) == 2 and {c.name for c in first} == {"svc-r1"}
    scaler(server, clock).step()  # a new autoscaler (a restarted server) reads the store: nothing to add
    assert [c.id for c in live_children(admin, sid)] == [c.id for c in first]
    admin.cancel(sid)
    scaler(server, clock).step()  # the service ended: its replicas are stopped
    assert live_children(admin, sid) == []
    assert all(admin.get_workload(c.id).status == "cancelled" for c in first)


def test_a_held_request_starts_a_replica_and_idle_scales_to_zero_after_the_delay(setup: Any) -> None:
    server, admin, clock = setup
    sid = admin.submit(spec(replicas={"min": 0, "max": 2}, scaling={"scale_down_delay": 60})).workload.id
    gateway = Gateway()
    autoscaler = scaler(server, clock, gateway)
    autoscaler.step()  # publishes the service; min 0 and no load: nothing runs
    assert live_children(admin, sid) == []
    assert gateway.hold(sid)
    autoscaler.step()
    assert len(live_children(admin, sid)) == 1
    gateway.unhold(gateway.service(sid))  # the request gave up; the load is 0 from now
    clock.advance(59)
    autoscaler.step()
    assert len(live_children(admin, sid)) == 1  # quiet for 59 s < scale_down_delay 60 s
    clock.advance(2)
    autoscaler.step()
    assert live_children(admin, sid) == []  # 61 s quiet: scaled to zero
    reasons = [e.reason for e in admin.get_workload(sid).events]
    assert any(r.startswith("scale up 0 -> 1") for r in reasons)
    assert any(r.startswith("scale to zero") and "scale_down_delay 60s" in r for r in reasons)


def test_a_replica_not_ready_within_the_readiness_timeout_is_replaced(tmp_path: Path) -> None:
    clock = ManualClock()
    server = start_server(server_settings(tmp_path / "home", f"sqlite:///{tmp_path / 'gpupool.db'}"),
                          FakeExecutor(default=RUN_FOREVER), clock=clock)  # workers on: replicas run, never listen
    try:
        with server.client() as admin:
            sid = admin.submit(spec(replicas={"min": 1, "max": 1},
                                    readiness={"path": "/health", "timeout": 30})).workload.id
            first = wait_until(lambda: [c for c in live_children(admin, sid) if c.status == "running"], 30, 0.05,
                               "a running replica")[0]
            clock.advance(31)  # running 31 s > readiness timeout 30 s, never ready
            wait_until(lambda: admin.get_workload(first.id).status == "cancelled", 30, 0.05, "replaced")
            wait_until(lambda: [c for c in live_children(admin, sid) if c.id != first.id], 30, 0.05, "a new one")
            assert any("not ready within 30s (readiness timeout)" in e.reason
                       for e in admin.get_workload(sid).events)
            admin.cancel(sid)
    finally:
        server.stop()
