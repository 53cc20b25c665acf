"""Real GPUs on Ray nodes: an agent that declares no simulated GPUs discovers its node's cards with the NVML
backend (here through the fake NVML of a description file, GPUPOOL_AGENT_GPU_DESCRIPTION, which runs the real
NvmlBackend code), the server stores them as the node's cards (not simulated, exclusive by default), places
GPU work there with the node's UUIDs, and attributes the GPU memory the agent samples on the node to the
replica by its session id on that node; MPS and MIG changes on such a node are refused with a 409.

A server over a fake Ray (tests/support/fake_ray.py) with its workers off: the test steps the node worker,
the scheduling loop and the GPU sampler itself. The replica's process is a real one, started by the test with
the environment the agent was given (the fake agent starts nothing), in a session of its own as the local
executor starts replicas; the description scripts the GPU memory of every process carrying its variable."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.support.fake_ray import FakeRay
from tests.support.gpus import a100s, write_description
from tests.support.servers import TestServer, server_settings, start_server

from gpupool.domain.errors import ConflictError
from gpupool.executors.ray import RayExecutor
from gpupool.gpu.fake import FakeBackend, read_description
from gpupool.gpu.fake_nvml import fake_uuid

NODE_A, NODE_B = "aa" * 28, "bb" * 28  # Ray node ids: 28 bytes in hex
GIB = 1024**3
GRACE_S = 0.2  # over-use must last this long: two sampler steps GRACE_S apart report it
HOG = (
    "name: hog\ncommand: x\nenv: {GPU_TEST_TAG: hog}\n"
    "resources: {cpu: 0.5, memory: 256MiB, gpu: {share: 0.25, memory: 10GiB}}\n"
)


@dataclass
class Cluster:
    server: TestServer
    fake: FakeRay
    description: Path

    def cycles(self, count: int = 4) -> None:
        for _ in range(count):
            self.server.services.scheduling_loop.step()
            self.server.services.reconciler_loop.step()


@pytest.fixture
def cluster(tmp_path: Path, database_url: str) -> Iterator[Cluster]:
    """node-a without GPUs; node-b whose agent discovers two A100-80GB (busy at 70 %) from a description in
    which every process with GPU_TEST_TAG=hog holds 14 GiB on the card it was given."""
    description = write_description(
        tmp_path / "node-b",
        {
            "node": "m",
            "gpus": [a100s(2, utilization=70)],
            "processes": [{"env": "GPU_TEST_TAG=hog", "memory": "14GiB"}],
        },
    )
    fake = FakeRay()
    fake.add_node(NODE_A, "node-a")
    fake.add_node(NODE_B, "node-b", gpu_description=str(description))
    settings = server_settings(tmp_path / "home", database_url, workers=False, overuse_grace_s=GRACE_S)
    server = start_server(settings, RayExecutor("fake", api=fake))  # one node pass at start
    try:
        yield Cluster(server, fake, description)
    finally:
        server.stop()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _start_replica_process(launch: Any) -> subprocess.Popen[bytes]:
    """The replica's process as the agent's local executor would run it: its environment, its own session."""
    return subprocess.Popen(
        ["sleep", "60"], env={**os.environ, **launch.env}, start_new_session=True, stdin=subprocess.DEVNULL
    )


def test_discovered_gpus_of_a_ray_node_are_stored_placed_by_uuid_sampled_and_attributed(cluster: Cluster) -> None:
    node = cluster.server.client().node("node-b")
    expected = [fake_uuid("m/node-b", k) for k in range(2)]  # seeded by the description and the node's name
    assert [g.uuid for g in node.gpus] == expected
    assert [(g.model, g.memory_mib, g.simulated, g.mode) for g in node.gpus] == [
        ("A100-SXM4-80GB", 80 * 1024, False, "exclusive")
    ] * 2
    assert node.gpu_backend == "nvml" and not node.simulated_gpus and node.driver_version == "550.54.15"
    assert cluster.server.client().node("node-a").gpus == []
    with cluster.server.client() as admin:
        admin.set_sharing("node-b", 0, "shared")  # no daemon needed: allowed on a cluster node
        admin.set_sharing("node-b", 1, "shared")
        wid = admin.submit(HOG).workload.id
        cluster.cycles()
        detail = admin.get_workload(wid)
        assert detail.status == "running" and detail.replica_list[0].node == "node-b", detail.message
        agent = cluster.fake.agent_on(NODE_B)
        (launch,) = agent.launches
        index = int(launch.env["GPUPOOL_GPU_INDICES"])
        assert launch.env["CUDA_VISIBLE_DEVICES"] == expected[index]  # the node's real UUID, not the server's
        process = _start_replica_process(launch)
        try:
            agent.session_ids[f"{wid}-0-{launch.attempt}"] = process.pid  # the session the agent reports
            cluster.server.services.sampler.step()
            time.sleep(GRACE_S * 1.5)
            cluster.server.services.sampler.step()
            gpu = next(g for g in admin.gpus_now() if g.node == "node-b" and g.index == index)
            (user,) = gpu.users
            assert (user.workload_id, user.memory_used_bytes) == (wid, 14 * GIB)
            assert gpu.unowned_memory_bytes == 0 and gpu.utilization_pct == 70.0
            over = [e for e in admin.get_workload(wid).events if "over-use" in e.reason]
            assert over and over[0].reason == (
                f"GPU memory over-use: replica 0 uses 14336 MiB on GPU {index}, more than the 10240 MiB it asked for"
            )
            exported = _samples(admin.prometheus_metrics())
            labels = (("gpu", str(index)), ("node", "node-b"), ("project", "default"), ("workload", str(wid)))
            assert exported[("gpupool_gpu_overuse_events_total", labels)] == 1
            memory = ("gpupool_workload_gpu_memory_used_bytes", (("project", "default"), ("workload", str(wid))))
            assert exported[memory] == 14 * GIB
            card = (("gpu", str(index)), ("model", "A100-SXM4-80GB"), ("node", "node-b"), ("uuid", expected[index]))
            assert exported[("gpupool_gpu_utilization", card)] == 0.7
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        admin.cancel(wid)


def test_a_process_of_another_session_on_the_node_is_not_the_replicas(cluster: Cluster) -> None:
    """The pid is resolved on the node: a tagged process whose session is not the replica's stays unowned."""
    with cluster.server.client() as admin:
        admin.set_sharing("node-b", 0, "shared")
        admin.set_sharing("node-b", 1, "shared")
        wid = admin.submit(HOG).workload.id
        cluster.cycles()
        agent = cluster.fake.agent_on(NODE_B)
        (launch,) = agent.launches
        index = int(launch.env["GPUPOOL_GPU_INDICES"])
        process = _start_replica_process(launch)
        try:
            agent.session_ids[f"{wid}-0-{launch.attempt}"] = process.pid + 100000  # another session
            cluster.server.services.sampler.step()
            gpu = next(g for g in admin.gpus_now() if g.node == "node-b" and g.index == index)
            assert gpu.users == [] or all(u.memory_used_bytes in (0, None) for u in gpu.users)
            assert gpu.unowned_memory_bytes == 14 * GIB
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        admin.cancel(wid)


def test_mps_and_mig_changes_on_a_cluster_nodes_real_gpus_are_refused(cluster: Cluster) -> None:
    with cluster.server.client() as admin:
        for change in (
            lambda: admin.set_sharing("node-b", 0, "mps"),
            lambda: admin.set_sharing("node-b", 0, "mig"),
            lambda: admin.set_mig("node-b", 0, "3g.40gb,3g.40gb"),
        ):
            with pytest.raises(ConflictError) as refused:
                change()
            assert "sharing-mode changes that need a daemon or MIG on a cluster node are not supported yet" in str(
                refused.value
            )
        assert [g.mode for g in admin.node("node-b").gpus] == ["exclusive", "exclusive"]
        assert admin.set_sharing("node-b", 0, "shared").gpu.mode == "shared"


def test_an_agent_discovers_from_a_description_and_without_nvml_reports_no_gpus(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The agent's own discovery (NodeAgent): a description file gives its cards and their UUIDs; NVML absent
    gives none, said once in its log."""
    from gpupool.executors.ray_agent import NodeAgent  # noqa: PLC0415

    caplog.set_level(logging.INFO, "gpupool.agent")
    description = write_description(tmp_path, {"node": "m", "gpus": [a100s(1)]})
    env = {
        "GPUPOOL_AGENT_HOME": str(tmp_path / "agent"),
        "GPUPOOL_AGENT_NODE_NAME": "n1",
        "GPUPOOL_AGENT_GPU_DESCRIPTION": str(description),
    }
    agent = NodeAgent("10.0.0.9", 2.0, 1024, env=env)
    try:
        described = agent.describe()
        cards = described.gpu_inventory["gpus"]
        own = FakeBackend({**read_description(description), "node": "m/n1"}).discover()
        assert [c["uuid"] for c in cards] == [g.uuid for g in own.gpus] and not described.gpus_simulated
        assert agent.sample_gpus(5.0).gpus[0].uuid == cards[0]["uuid"]
    finally:
        agent.close()
    bare = NodeAgent(
        "10.0.0.10", 2.0, 1024, env={"GPUPOOL_AGENT_HOME": str(tmp_path / "bare"), "GPUPOOL_AGENT_NODE_NAME": "n2"}
    )
    try:
        inventory = bare.describe().gpu_inventory
        if inventory["unavailable"] is None:
            pytest.skip("this machine has NVML with GPUs")
        assert not inventory["gpus"] and "n2: no GPUs" in caplog.text
        assert bare.sample_gpus(5.0).gpus == ()
    finally:
        bare.close()
