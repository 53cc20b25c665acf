"""`gpupool top` says how GPU memory was attributed when NVML's pids are of another PID namespace, and shows
an MPS server's memory apart from foreign use."""

from __future__ import annotations

from rich.console import Console

from gpupool.cli.monitor import top_table
from gpupool.server.api.gpu_schemas import GpuNow

MIB = 1024 * 1024


def _render(gpu: GpuNow) -> str:
    console = Console(record=True, width=240)
    console.print(top_table([gpu.model_dump(mode="json")]))  # the JSON the server sends for it
    return console.export_text()


def test_the_attribution_note_and_the_mps_server_are_shown() -> None:
    gpu = GpuNow(node="n1", index=0, uuid="GPU-a", model="A100-SXM4-80GB", mode="mps", simulated=False,
                 healthy=True, mps_server_memory_bytes=300 * MIB, unowned_memory_bytes=1024 * MIB,
                 attribution_note="NVML reports process ids of another PID namespace")
    text = _render(gpu)
    assert "MPS server 300MiB" in text.replace(" MiB", "MiB") and "other 1" in text
    assert "n1: NVML reports process ids of another PID namespace" in text


def test_without_a_note_there_is_no_caption() -> None:
    gpu = GpuNow(node="n1", index=0, uuid="GPU-a", model="A100", mode="exclusive", simulated=False, healthy=True)
    assert "PID namespace" not in _render(gpu) and "MPS server" not in _render(gpu)
