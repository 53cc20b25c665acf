"""This host as nodes: declared (simulated) GPUs, several nodes on one host, real CPU and memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpupool.domain.errors import ValidationError
from gpupool.domain.resources import SharingMode
from gpupool.gpu.fake import FakeBackend
from gpupool.server.local_node import (
    SIMULATED_LABEL,
    local_nodes,
    machine_cpu_milli,
    machine_memory_mib,
    parse_declared_gpus,
)
from gpupool.server.settings import Settings


def test_declared_gpus() -> None:
    gpus = parse_declared_gpus("4xA100-80GB")
    # 4 cards of 80 GiB = 80 * 1024 MiB, indices 0..3, all simulated, shared by default
    assert [(g.index, g.model, g.memory_mib, g.simulated, g.mode) for g in gpus] == [
        (k, "A100-80GB", 81920, True, SharingMode.SHARED) for k in range(4)]
    mixed = parse_declared_gpus("2xh100, 1xT4-16GB", mode="exclusive")
    # H100 without a size defaults to 80 GiB; indices continue across the list
    assert [(g.index, g.model, g.memory_mib) for g in mixed] == [(0, "H100", 81920), (1, "H100", 81920),
                                                                  (2, "T4-16GB", 16384)]
    assert parse_declared_gpus("") == ()


@pytest.mark.parametrize(("text", "message"), [("4xA100-80", "cannot read"), ("2xA100-80TB", "cannot read"),
                                               ("65xA100", "at most 64"), ("4x", "cannot read")])
def test_bad_declarations(text: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_declared_gpus(text)


def test_several_nodes_on_one_host(tmp_path: object) -> None:
    settings = Settings(home="/tmp/x", nodes=3, node_name="box", gpus="2xA100-80GB", node_cpus=8, node_memory="32GiB")
    nodes = [local.node for local in local_nodes(settings)]
    assert [n.name for n in nodes] == ["box-0", "box-1", "box-2"]
    assert all(n.cpu_milli == 8000 and n.memory_mib == 32768 and len(n.gpus) == 2 for n in nodes)
    assert all(n.labels[SIMULATED_LABEL] == "true" for n in nodes)
    # declared GPUs are fake cards behind a fake NVML: simulated, shared by default, distinct UUIDs per node
    assert all(g.simulated and g.mode == SharingMode.SHARED and g.model == "A100-80GB" for n in nodes for g in n.gpus)
    assert len({g.uuid for n in nodes for g in n.gpus}) == 6


def test_the_real_machine_without_gpus() -> None:
    (local,) = local_nodes(Settings(home="/tmp/x", node_name="real"), nvml_backend=lambda: FakeBackend({"gpus": []}))
    node = local.node
    assert node.cpu_milli == machine_cpu_milli() >= 1000
    assert node.memory_mib == machine_memory_mib() > 0
    assert node.gpus == () and SIMULATED_LABEL not in node.labels


def test_a_scripted_description_gives_cards_that_act_like_real_ones(tmp_path: Path) -> None:
    description = tmp_path / "gpus.yaml"
    description.write_text("node: demo\ngpus:\n  - {model: NVIDIA A100-SXM4-80GB, memory: 80GiB, count: 2, "
                           "nvlink: b}\n")
    (local,) = local_nodes(Settings(home="/tmp/x", node_name="demo", gpu_description=description))
    assert local.gpus.kind == "fake" and not local.gpus.simulated
    # exclusive unless the admin says otherwise; NVLink peers form one group named by the lowest index
    assert [(g.index, g.mode, g.nvlink_group, g.simulated) for g in local.node.gpus] == [
        (0, SharingMode.EXCLUSIVE, 0, False), (1, SharingMode.EXCLUSIVE, 0, False)]
    assert local.gpus.inventory.driver_version == "550.54.15"


def test_several_nodes_need_their_size_and_simulated_gpus() -> None:
    unsized = Settings(home="/tmp/x", nodes=2, gpus="1xA100-80GB")
    with pytest.raises(ValidationError, match="give each node's size"):
        local_nodes(unsized)
    sized = {"home": "/tmp/x", "nodes": 2, "node_cpus": 8, "node_memory": "32GiB"}

    def real_cards() -> FakeBackend:  # what NVML finds on a real machine: cards that are not simulated
        return FakeBackend({"node": "real", "simulated": False, "gpus": [{"model": "A100-80GB", "memory": "80GiB"}]})

    with pytest.raises(ValidationError, match="hand out each card several times"):
        local_nodes(Settings(**sized), nvml_backend=real_cards)
    assert len(local_nodes(Settings(**sized, gpus="1xA100-80GB"), nvml_backend=real_cards)) == 2
    assert len(local_nodes(Settings(**{**sized, "nodes": 1}), nvml_backend=real_cards)) == 1
