"""A Ray node as its agent describes it becomes a pool node (no cluster needed: the description is data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpupool.domain.resources import SharingMode
from gpupool.executors.ray_agent import NodeAgent, NodeDescription
from gpupool.gpu.fake import FakeBackend
from gpupool.gpu.fake_nvml import fake_uuid
from gpupool.server.ray_nodes import MARKER_FILE, RAY_NODE_LABEL, node_from_description, write_marker


def test_an_agent_description_becomes_a_node_with_its_declared_gpus() -> None:
    description = NodeDescription(name="gpu-7", address="10.0.0.7", cpus=2.5, memory_mib=8192,
                                  gpus="2xA100-80GB", labels={"rack": "r2"})
    local = node_from_description(description, "gpupool-agent-abc")
    assert local.address == "10.0.0.7"
    assert (local.node.name, local.node.cpu_milli, local.node.memory_mib) == ("gpu-7", 2500, 8192)  # 2.5 cores
    assert [(g.model, g.memory_mib) for g in local.node.gpus] == [("A100-80GB", 81920)] * 2
    assert local.node.labels == {RAY_NODE_LABEL: "gpupool-agent-abc", "rack": "r2"}


def test_a_node_without_declared_gpus_has_none() -> None:
    local = node_from_description(NodeDescription("cpu-1", "10.0.0.1", 4, 1024, "", {}), "a")
    assert list(local.node.gpus) == []


def _discovered(simulated: bool = False) -> NodeDescription:
    """A node whose agent discovered one A100-80GB (what it sends: GpuInventory.to_dict)."""
    cards = FakeBackend({"node": "d", "gpus": [{"model": "NVIDIA A100-SXM4-80GB", "memory": "80GiB"}]}).discover()
    return NodeDescription("gpu-9", "10.0.0.9", 2, 1024, "", {}, cards.to_dict(), simulated)


def test_discovered_gpus_are_the_nodes_cards_in_the_servers_default_mode(caplog: pytest.LogCaptureFixture) -> None:
    local = node_from_description(_discovered(), "a")
    assert [(g.model, g.uuid, g.simulated, g.mode) for g in local.node.gpus] == [
        ("A100-SXM4-80GB", fake_uuid("d", 0), False, SharingMode.EXCLUSIVE)]
    assert (local.gpus.kind, local.gpus.remote) == ("nvml", True)
    assert local.node.gpus[0].mode == SharingMode.EXCLUSIVE
    assert node_from_description(_discovered(), "a", gpu_mode="shared").node.gpus[0].mode == SharingMode.SHARED
    # mps needs a daemon on the node: real cards fall back to exclusive, said in the log; simulated ones take it
    assert node_from_description(_discovered(), "a", gpu_mode="mps").node.gpus[0].mode == SharingMode.EXCLUSIVE
    assert "GPUPOOL_GPU_MODE=mps is not applied" in caplog.text
    simulated = node_from_description(_discovered(simulated=True), "a", gpu_mode="mps")
    assert (simulated.node.gpus[0].mode, simulated.node.gpus[0].simulated) == (SharingMode.MPS, True)
    declared = NodeDescription("gpu-7", "10.0.0.7", 2, 1024, "1xA100-80GB", {})
    assert node_from_description(declared, "a").node.gpus[0].mode == SharingMode.SHARED
    assert node_from_description(declared, "a", gpu_mode="exclusive").node.gpus[0].mode == SharingMode.EXCLUSIVE


def test_the_storage_marker_is_seen_only_where_the_same_file_is(tmp_path: Path) -> None:
    path, content = write_marker(tmp_path / "storage")
    assert Path(path).parent == tmp_path / "storage" and len(content) == 32
    agent = NodeAgent("10.0.0.2", 1, 1024, env={"GPUPOOL_AGENT_HOME": str(tmp_path / "agent")})
    assert agent.sees(path, content)
    assert not agent.sees(path, content[::-1])  # another server's marker: another filesystem
    assert not agent.sees(str(tmp_path / "elsewhere" / MARKER_FILE), content)  # not mounted there
    assert write_marker(tmp_path / "storage")[1] != content  # fresh at every start
