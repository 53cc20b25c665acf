"""Per-replica GPU environments by sharing mode, and the injected PyTorch memory cap (run for real with the
CPU build of torch==2.13.0: without CUDA it must be a harmless no-op)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from gpupool.domain.errors import ValidationError
from gpupool.domain.nodes import Gpu, MigInstance
from gpupool.domain.resources import SharingMode
from gpupool.executors.environment import gpu_env
from gpupool.gpu import _sitecustomize
from gpupool.gpu.mps import mps_paths
from gpupool.gpu.sharing import SharingConfig, gpu_environment, install_sitecustomize
from gpupool.scheduler.types import GpuAssignment

GIB = 1024


def _cards() -> list[Gpu]:
    return [
        Gpu(0, "A100-SXM4-80GB", 80 * GIB, SharingMode.EXCLUSIVE, uuid="GPU-aaa"),
        Gpu(1, "A100-SXM4-80GB", 80 * GIB, SharingMode.EXCLUSIVE, uuid="GPU-bbb"),
        Gpu(2, "A100-SXM4-80GB", 80 * GIB, SharingMode.SHARED, uuid="GPU-ccc"),
        Gpu(3, "A100-SXM4-80GB", 80 * GIB, SharingMode.MPS, uuid="GPU-ddd"),
        Gpu(4, "A100-SXM4-80GB", 80 * GIB, SharingMode.MIG, uuid="GPU-eee",
            mig_instances=(MigInstance("3g.40gb", "MIG-e1"), MigInstance("1g.10gb", "MIG-e2"))),
    ]


@pytest.fixture
def config(tmp_path: Path) -> SharingConfig:
    return SharingConfig(home=tmp_path / "home")


def test_whole_cards_are_named_by_uuid(config: SharingConfig) -> None:
    env = gpu_environment([GpuAssignment(0, 1000, 80 * GIB), GpuAssignment(1, 1000, 80 * GIB)], _cards(), config)
    assert env.mode == SharingMode.EXCLUSIVE
    assert env.variables["CUDA_VISIBLE_DEVICES"] == "GPU-aaa,GPU-bbb"
    assert env.prepend == {}


def test_a_whole_card_in_shared_mode_needs_no_cap(config: SharingConfig) -> None:
    env = gpu_environment([GpuAssignment(2, 1000, 80 * GIB)], _cards(), config)
    assert env.mode == SharingMode.EXCLUSIVE and env.variables["CUDA_VISIBLE_DEVICES"] == "GPU-ccc"


def test_a_share_of_a_time_sliced_card_gets_the_pytorch_cap(config: SharingConfig) -> None:
    env = gpu_environment([GpuAssignment(2, 250, 20 * GIB)], _cards(), config)
    assert env.mode == SharingMode.SHARED
    assert env.variables["CUDA_VISIBLE_DEVICES"] == "GPU-ccc"
    assert env.variables["GPUPOOL_GPU_MEMORY_LIMIT_MIB"] == "20480"
    assert env.prepend == {"PYTHONPATH": str(config.home / "gpu" / "pythonpath")}
    assert "LD_PRELOAD" not in env.variables and "not enforced" in env.notes[0]


def test_hami_core_replaces_the_soft_cap_when_configured(tmp_path: Path) -> None:
    config = SharingConfig(home=tmp_path, hami_library=Path("/opt/hami/libvgpu.so"))
    env = gpu_environment([GpuAssignment(2, 333, 10 * GIB)], _cards(), config)
    # 333 milli = 33.3 % of the SMs, rounded up to 34
    assert env.variables["CUDA_DEVICE_MEMORY_LIMIT"] == "10240m"
    assert env.variables["CUDA_DEVICE_SM_LIMIT"] == "34"
    assert env.prepend == {"LD_PRELOAD": "/opt/hami/libvgpu.so"}


def test_an_mps_client_gets_its_daemon_and_limits(config: SharingConfig) -> None:
    env = gpu_environment([GpuAssignment(3, 250, 20 * GIB)], _cards(), config)
    assert env.mode == SharingMode.MPS
    assert env.variables["CUDA_MPS_PIPE_DIRECTORY"] == str(mps_paths(config.home, "GPU-ddd").pipe_dir)
    assert env.variables["CUDA_MPS_LOG_DIRECTORY"] == str(mps_paths(config.home, "GPU-ddd").log_dir)
    assert env.variables["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"
    assert env.variables["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=20480M"
    # the daemon sees only this card, and MPS renumbers it 0 for its clients
    assert env.variables["CUDA_VISIBLE_DEVICES"] == "0"


def test_a_mig_instance_is_named_by_its_mig_uuid(config: SharingConfig) -> None:
    env = gpu_environment([GpuAssignment(4, 143, 10 * GIB, mig_instance=1)], _cards(), config)
    assert env.mode == SharingMode.MIG
    assert env.variables["CUDA_VISIBLE_DEVICES"] == "MIG-e2"
    two = gpu_environment([GpuAssignment(4, 429, 40 * GIB, 0), GpuAssignment(4, 143, 10 * GIB, 1)], _cards(), config)
    assert two.variables["CUDA_VISIBLE_DEVICES"] == "MIG-e1,MIG-e2"
    assert any("only the first MIG device" in n for n in two.notes)


def test_cpu_only_replicas_see_no_gpu(config: SharingConfig) -> None:
    assert gpu_environment([], _cards(), config).variables == {"CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.parametrize("assignment", [GpuAssignment(9, 1000, 0), GpuAssignment(4, 143, 0, mig_instance=5)])
def test_assignments_the_node_cannot_honour_are_refused(config: SharingConfig, assignment: GpuAssignment) -> None:
    with pytest.raises(ValidationError):
        gpu_environment([assignment], _cards(), config)


def test_path_variables_are_prepended_to_the_workloads_own(config: SharingConfig) -> None:
    env = gpu_environment([GpuAssignment(2, 500, 40 * GIB)], _cards(), config)
    merged = env.merged_into({"PYTHONPATH": "/work/src", "NCCL_DEBUG": "WARN"})
    assert merged["PYTHONPATH"] == f"{config.sitecustomize_dir}{os.pathsep}/work/src"
    assert merged["NCCL_DEBUG"] == "WARN" and merged["CUDA_VISIBLE_DEVICES"] == "GPU-ccc"
    assert env.merged_into({})["PYTHONPATH"] == str(config.sitecustomize_dir)


def test_install_sitecustomize_writes_the_hook_once(config: SharingConfig) -> None:
    folder = install_sitecustomize(config)
    target = folder / "sitecustomize.py"
    assert target.read_text() == Path(_sitecustomize.__file__).read_text()
    stamp = target.stat().st_mtime_ns
    install_sitecustomize(config)
    assert target.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in folder.iterdir()) == ["__pycache__", "sitecustomize.py"]


def _run_python(code: str, env: dict[str, str]) -> dict[str, object]:
    base = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    done = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_hook_caps_nothing_and_breaks_nothing_without_cuda(config: SharingConfig, tmp_path: Path) -> None:
    # a second sitecustomize further along the path, as a distribution or virtualenv may have one
    other = tmp_path / "other-site"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import os\nos.environ['OTHER_SITECUSTOMIZE_RAN'] = '1'\n")
    env = gpu_environment([GpuAssignment(2, 250, 20 * GIB)], _cards(), config)
    install_sitecustomize(config)
    code = """
import json, os, sys
import sitecustomize
before = sitecustomize.gpupool_state()
import torch
total = float(torch.ones(4).sum())
cuda = torch.cuda.is_available()
ours = [c for c, _ in torch.cuda._queued_calls if "_after_torch_import" in getattr(c, "__qualname__", "")]
for call in ours:
    call()  # what CUDA initialisation would run: with no device it must cap nothing and raise nothing
after = sitecustomize.gpupool_state()
print(json.dumps({"before": before, "after": after, "total": total, "cuda": cuda, "ours": len(ours),
                  "other": os.environ.get("OTHER_SITECUSTOMIZE_RAN")}))
"""
    out = _run_python(code, env.merged_into({"PYTHONPATH": str(other)}))
    assert out["before"] == {"installed": True, "torch_imported": False, "queued": False, "applied": [],
                             "error": None, "chained": str(other / "sitecustomize.py")}
    assert out["after"]["torch_imported"] is True and out["after"]["queued"] is True
    assert out["after"]["applied"] == [] and out["after"]["error"] is None
    assert (out["total"], out["cuda"], out["ours"], out["other"]) == (4.0, False, 1, "1")


def test_the_hook_never_imports_torch_itself(config: SharingConfig) -> None:
    env = gpu_environment([GpuAssignment(2, 250, 20 * GIB)], _cards(), config)
    install_sitecustomize(config)
    code = "import json, sys, sitecustomize; print(json.dumps({**sitecustomize.gpupool_state(), " \
           "'torch_loaded': 'torch' in sys.modules}))"
    out = _run_python(code, env.merged_into({}))
    assert (out["installed"], out["torch_imported"], out["torch_loaded"]) == (True, False, False)


def test_the_cap_is_the_limit_over_each_devices_memory() -> None:
    class Cuda:
        def __init__(self) -> None:
            self.fractions: dict[int, float] = {}

        def device_count(self) -> int:
            return 2

        def get_device_properties(self, device: int) -> SimpleNamespace:
            return SimpleNamespace(total_memory=80 * 1024**3)

        def set_per_process_memory_fraction(self, fraction: float, device: int) -> None:
            self.fractions[device] = fraction

    torch = SimpleNamespace(cuda=Cuda())
    # 20480 MiB of 81920 MiB = 0.25 on every device; a per-device list caps each (and clamps to 1)
    assert _sitecustomize.apply_memory_cap(torch, [20480]) == [(0, 0.25), (1, 0.25)]
    assert _sitecustomize.apply_memory_cap(torch, [40960, 163840]) == [(0, 0.5), (1, 1.0)]
    assert _sitecustomize.parse_limits("10240, 20480") == [10240, 20480]
    assert _sitecustomize.parse_limits("lots") == [] and _sitecustomize.parse_limits("-5") == []


def test_simulated_cards_expose_no_device(config: SharingConfig) -> None:
    cards = [Gpu(0, "A100", 80 * GIB, SharingMode.SHARED, uuid="GPU-sim", simulated=True)]
    env = gpu_environment([GpuAssignment(0, 500, 40 * GIB)], cards, config)
    assert env.variables == {"CUDA_VISIBLE_DEVICES": "", "GPUPOOL_GPU_SIMULATED": "1", "GPUPOOL_GPU_INDICES": "0",
                             "GPUPOOL_GPU_SHARING_MODE": "shared", "GPUPOOL_GPU_MILLI": "500",
                             "GPUPOOL_GPU_MEMORY_LIMIT_MIB": "40960"}
    assert env.prepend == {}


@pytest.mark.parametrize("assignments", [
    [], [GpuAssignment(0, 1000, 80 * GIB), GpuAssignment(1, 1000, 80 * GIB)], [GpuAssignment(2, 250, 20 * GIB)],
    [GpuAssignment(4, 143, 10 * GIB, mig_instance=1)],
])
def test_the_device_list_agrees_with_the_executors_plain_gpu_env(config: SharingConfig,
                                                                  assignments: list[GpuAssignment]) -> None:
    # gpu/sharing.py supersedes executors.environment.gpu_env: every variable both set must mean the same
    ours = gpu_environment(assignments, _cards(), config).variables
    plain = gpu_env(assignments, _cards())
    assert {k: v for k, v in plain.items() if k in ours} == {k: ours[k] for k in plain if k in ours}
    assert ours["CUDA_VISIBLE_DEVICES"] == plain["CUDA_VISIBLE_DEVICES"]
