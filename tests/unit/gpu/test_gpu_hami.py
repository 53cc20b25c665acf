"""HAMi-core on time-sliced GPUs: every replica gets its own shared cache file (limits and usage are not
pooled across the host), the files of ended replicas are removed, the lock directory exists."""

from __future__ import annotations

import stat
from pathlib import Path

from gpupool.domain.nodes import Gpu
from gpupool.domain.resources import SharingMode
from gpupool.gpu.sharing import SharingConfig, gpu_environment, install_sitecustomize, sweep_hami_caches
from gpupool.scheduler.types import GpuAssignment

GIB_MIB = 1024
CARD = [Gpu(0, "A100-SXM4-80GB", 80 * GIB_MIB, SharingMode.SHARED, uuid="GPU-aaa")]


def _config(tmp_path: Path) -> SharingConfig:
    return SharingConfig(home=tmp_path / "home", hami_library=Path("/opt/hami/libvgpu.so"),
                         hami_lock_dir=tmp_path / "vgpulock")


def test_each_replica_gets_its_own_cache_file(tmp_path: Path) -> None:
    config = _config(tmp_path)
    first = gpu_environment([GpuAssignment(0, 500, 20 * GIB_MIB)], CARD, config, replica_id=41)
    second = gpu_environment([GpuAssignment(0, 250, 10 * GIB_MIB)], CARD, config, replica_id=42)
    a, b = (Path(e.variables["CUDA_DEVICE_MEMORY_SHARED_CACHE"]) for e in (first, second))
    assert a != b and a.parent == b.parent == config.hami_cache_root
    assert a.name.startswith("41.") and b.name.startswith("42.") and a.suffix == ".cache"
    assert (first.variables["CUDA_DEVICE_MEMORY_LIMIT"], second.variables["CUDA_DEVICE_MEMORY_LIMIT"]) == \
        ("20480m", "10240m")
    # replicas of any user create their file there; nobody lists or removes another's
    assert stat.S_IMODE(config.hami_cache_root.stat().st_mode) == 0o1733


def test_without_a_replica_id_or_hami_no_cache_file_is_named(tmp_path: Path) -> None:
    env = gpu_environment([GpuAssignment(0, 500, 20 * GIB_MIB)], CARD, _config(tmp_path))
    assert "CUDA_DEVICE_MEMORY_SHARED_CACHE" not in env.variables
    soft = gpu_environment([GpuAssignment(0, 500, 20 * GIB_MIB)], CARD, SharingConfig(tmp_path), replica_id=1)
    assert "CUDA_DEVICE_MEMORY_SHARED_CACHE" not in soft.variables and "LD_PRELOAD" not in soft.prepend


def test_the_files_of_ended_replicas_are_swept(tmp_path: Path) -> None:
    config = _config(tmp_path)
    files = {}
    for replica in (7, 8, 9):
        env = gpu_environment([GpuAssignment(0, 300, 8 * GIB_MIB)], CARD, config, replica_id=replica)
        files[replica] = Path(env.variables["CUDA_DEVICE_MEMORY_SHARED_CACHE"])
        files[replica].write_bytes(b"\0" * 64)  # what HAMi-core creates at cuInit
    (config.hami_cache_root / "notes.txt").write_text("not ours")
    removed = sweep_hami_caches(config, live_replica_ids={8})
    assert sorted(removed) == sorted([files[7], files[9]])
    assert files[8].exists() and (config.hami_cache_root / "notes.txt").exists()
    assert sweep_hami_caches(config, {8}) == []  # level-triggered: nothing left to do


def test_install_creates_the_lock_directory_hami_core_expects(tmp_path: Path) -> None:
    config = _config(tmp_path)
    install_sitecustomize(config)
    assert stat.S_IMODE(config.hami_lock_dir.stat().st_mode) == 0o1777
    plain = SharingConfig(home=tmp_path / "other", hami_lock_dir=tmp_path / "unused")
    install_sitecustomize(plain)
    assert not plain.hami_lock_dir.exists()  # only when HAMi-core is configured
