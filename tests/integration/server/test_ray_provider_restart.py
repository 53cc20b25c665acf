"""A server restarted while a node agent does not answer keeps the node and its replica: the Ray node provider
(over a fake Ray, tests/support/fake_ray.py) vouches for a stored node whose agent is silent on a node Ray
reports alive, and the node worker keeps it; only Ray declaring the node dead loses the replica."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.fake_ray import ANSWER, TIMEOUT, FakeRay
from tests.support.servers import TestServer, server_settings, start_server, wait_until

from gpupool.executors.fake import RUN_FOREVER, FakeCluster, FakeExecutor
from gpupool.executors.ray import RayExecutor
from gpupool.server.ray_nodes import RayNodeProvider

NODE_A, NODE_B = "aa" * 28, "bb" * 28  # Ray node ids: 28 bytes in hex
SYNC_INTERVAL_S = 0.05
SILENT_WATCH_S = 2.0  # forty node passes at SYNC_INTERVAL_S while the agent is silent


def _serve(tmp_path: Path, fake: FakeRay, replicas: FakeCluster) -> TestServer:
    settings = server_settings(
        tmp_path / "home", f"sqlite:///{tmp_path / 'gpupool.db'}", node_sync_interval_s=SYNC_INTERVAL_S
    )
    provider = RayNodeProvider(RayExecutor("fake", api=fake))
    return start_server(settings, FakeExecutor(replicas, default=RUN_FOREVER), node_providers=[provider])


def _names(server: TestServer) -> list[str]:
    with server.client() as client:
        return sorted(n.name for n in client.nodes())


def test_a_server_restarted_while_an_agent_is_silent_keeps_its_node_and_replica(tmp_path: Path) -> None:
    fake, replicas = FakeRay(), FakeCluster()
    fake.add_node(NODE_A, "node-a")
    fake.add_node(NODE_B, "node-b", gpus="1xA100-80GB")
    server = _serve(tmp_path, fake, replicas)
    try:
        wait_until(lambda: {"node-a", "node-b"} <= set(_names(server)), what="both Ray nodes registered")
        with server.client() as client:
            wid = client.submit("name: r\ncommand: x\nretries: 1\nresources: {cpu: 1, gpu: 1}\n").workload.id
            wait_until(lambda: client.get_workload(wid).status == "running", what="running on node-b")
            assert client.get_workload(wid).replica_list[0].node == "node-b"
    finally:
        server.stop()
    fake.agent_on(NODE_B).mode = TIMEOUT  # busy or restarting while the server is down and comes back
    server = _serve(tmp_path, fake, replicas)
    try:
        with server.client() as client:
            deadline = time.monotonic() + SILENT_WATCH_S
            while time.monotonic() < deadline:
                assert "node-b" in _names(server)
                detail = client.get_workload(wid)
                assert (detail.status, detail.retries_used) == ("running", 0), detail.message
                time.sleep(SYNC_INTERVAL_S)
            fake.agent_on(NODE_B).mode = ANSWER
            time.sleep(10 * SYNC_INTERVAL_S)
            assert client.get_workload(wid).status == "running"
            fake.declare_dead(NODE_B)  # only now is the node gone, and its replica lost
            wait_until(lambda: "node-b" not in _names(server), what="node-b gone")
            wait_until(lambda: client.get_workload(wid).retries_used == 1, what="the replica lost and retried")
            assert any("lost: node node-b left the pool" in e.reason for e in client.get_workload(wid).events)
    finally:
        server.stop()
