"""A Ray node as its agent describes it becomes a pool node (no cluster needed: the description is data)."""

from __future__ import annotations

from pathlib import Path

from gpupool.executors.ray_agent import NodeAgent, NodeDescription
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


def test_the_storage_marker_is_seen_only_where_the_same_file_is(tmp_path: Path) -> None:
    path, content = write_marker(tmp_path / "storage")
    assert Path(path).parent == tmp_path / "storage" and len(content) == 32
    agent = NodeAgent("10.0.0.2", 1, 1024, env={"GPUPOOL_AGENT_HOME": str(tmp_path / "agent")})
    assert agent.sees(path, content)
    assert not agent.sees(path, content[::-1])  # another server's marker: another filesystem
    assert not agent.sees(str(tmp_path / "elsewhere" / MARKER_FILE), content)  # not mounted there
    assert write_marker(tmp_path / "storage")[1] != content  # fresh at every start
