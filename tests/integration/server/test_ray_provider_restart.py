"""A server restarted while a node agent does not answer keeps the node and its replica: the Ray node provider
(over a fake Ray, tests/support/fake_ray.py, which the Ray executor also runs replicas through) vouches for a
stored node whose agent is silent on a node Ray reports alive, the node worker keeps it, and the reconciler's
polls wait for the agent quietly (one warning in the log); only Ray declaring the node dead loses the
replica."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
from tests.support.fake_ray import ANSWER, TIMEOUT, FakeRay
from tests.support.servers import TestServer, server_settings, start_server, wait_until

from gpupool.executors.ray import RayExecutor
from gpupool.server.ray_nodes import RayNodeProvider

NODE_A, NODE_B = "aa" * 28, "bb" * 28  # Ray node ids: 28 bytes in hex
SYNC_INTERVAL_S = 0.05
SILENT_WATCH_S = 2.0  # forty node passes at SYNC_INTERVAL_S while the agent is silent


def _serve(tmp_path: Path, fake: FakeRay) -> TestServer:
    settings = server_settings(
        tmp_path / "home", f"sqlite:///{tmp_path / 'gpupool.db'}", node_sync_interval_s=SYNC_INTERVAL_S
    )
    executor = RayExecutor("fake", api=fake)  # replicas run through the fake agents too
    return start_server(settings, executor, node_providers=[RayNodeProvider(executor)])


def _node(server: TestServer, name: str) -> Any:
    with server.client() as client:
        return next(n for n in client.nodes() if n.name == name)


def _names(server: TestServer) -> list[str]:
    with server.client() as client:
        return sorted(n.name for n in client.nodes())


def test_a_server_restarted_while_an_agent_is_silent_keeps_its_node_and_replica(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeRay()
    fake.add_node(NODE_A, "node-a")
    fake.add_node(NODE_B, "node-b", gpus="1xA100-80GB")
    server = _serve(tmp_path, fake)
    try:
        wait_until(lambda: {"node-a", "node-b"} <= set(_names(server)), what="both Ray nodes registered")
        with server.client() as client:
            wid = client.submit("name: r\ncommand: x\nretries: 1\nresources: {cpu: 1, gpu: 1}\n").workload.id
            wait_until(lambda: client.get_workload(wid).status == "running", what="running on node-b")
            assert client.get_workload(wid).replica_list[0].node == "node-b"
    finally:
        server.stop()
    fake.agent_on(NODE_B).mode = TIMEOUT  # busy or restarting while the server is down and comes back
    caplog.clear()
    server = _serve(tmp_path, fake)
    try:
        with server.client() as client:
            deadline = time.monotonic() + SILENT_WATCH_S
            while time.monotonic() < deadline:
                assert "node-b" in _names(server)
                detail = client.get_workload(wid)
                assert (detail.status, detail.retries_used) == ("running", 0), detail.message
                time.sleep(SYNC_INTERVAL_S)
            assert not _node(server, "node-b").schedulable  # kept, but no new work goes to a silent node
            second = client.submit("name: s\ncommand: x\nresources: {cpu: 1, gpu: 1}\n").workload.id
            time.sleep(10 * SYNC_INTERVAL_S)
            assert client.get_workload(second).status == "pending"  # waits for it, not refused as never-fit
            noisy = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("gpupool")]
            assert len(noisy) == 1 and "does not answer" in noisy[0].getMessage(), [r.getMessage() for r in noisy]
            fake.agent_on(NODE_B).mode = ANSWER
            wait_until(lambda: _node(server, "node-b").schedulable, what="node-b takes work again")
            assert client.get_workload(wid).status == "running"
            client.cancel(second)
            # registered before the restart, and watched again by this server (its GPUs, their metrics)
            assert server.services.gpu_runtime().node("node-b").name == "node-b"
            fake.declare_dead(NODE_B)  # only now is the node gone, and its replica lost
            wait_until(lambda: "node-b" not in _names(server), what="node-b gone")
            wait_until(lambda: client.get_workload(wid).retries_used == 1, what="the replica lost and retried")
            assert any("lost: node node-b left the pool" in e.reason for e in client.get_workload(wid).events)
    finally:
        server.stop()
