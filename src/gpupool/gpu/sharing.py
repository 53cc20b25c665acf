"""The GPU environment of one replica, by the sharing mode of the cards it was given.

- exclusive (and whole cards on any non-MPS card): `CUDA_VISIBLE_DEVICES=<GPU uuids>`.
- shared (time-slicing): the card's UUID, `GPUPOOL_GPU_MEMORY_LIMIT_MIB` = the memory the scheduler
  assigned, and either the injected `sitecustomize` directory first on PYTHONPATH (caps PyTorch's caching
  allocator with `torch.cuda.set_per_process_memory_fraction` once CUDA initialises), or, when the admin
  configured a HAMi-core `libvgpu.so`, `LD_PRELOAD` of it with its documented `CUDA_DEVICE_MEMORY_LIMIT`
  (e.g. "10240m") and `CUDA_DEVICE_SM_LIMIT` (percent) variables (https://github.com/Project-HAMi/HAMi-core,
  README "Usage") for a hard limit, and `CUDA_DEVICE_MEMORY_SHARED_CACHE` naming a file of the replica's
  own: HAMi-core keeps limits and usage in that shared file (default `/tmp/cudevshr.cache`, one for every
  process of the host), so without it the first replica's limit would apply to all and their usage would
  be pooled. The files are `$GPUPOOL_HOME/gpu/hami/<replica id>.<random>.cache`, in a directory of mode
  1733 (replicas of any user create their file, nobody lists or removes another's; the random part keeps
  others from creating it first), and `sweep_hami_caches` removes those of replicas that ended.
  HAMi-core's lock directory (`/tmp/vgpulock`, README "Usage") is compiled into the library, not set by
  an environment variable, so it stays one per host; `install_sitecustomize` creates it (mode 1777) when
  HAMi-core is configured.
- mps: `CUDA_MPS_PIPE_DIRECTORY` / `CUDA_MPS_LOG_DIRECTORY` of the card's MPS control daemon,
  `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE` = the share in percent (rounded up), and
  `CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=<MiB>M` from the memory request (NVIDIA MPS documentation, "Appendix:
  Tools and Interface Reference", environment variables). `CUDA_VISIBLE_DEVICES=0`: the daemon was started
  with the card's UUID, and MPS remaps the devices its clients see (same section, CUDA_VISIBLE_DEVICES).
- mig: `CUDA_VISIBLE_DEVICES=MIG-<uuid>` of the assigned instance(s) (CUDA enumerates one MIG device per
  process; see the MIG user guide, "CUDA Device Enumeration").

CPU-only replicas get `CUDA_VISIBLE_DEVICES=""` so that they cannot touch the node's GPUs by accident.
Every GPU replica also gets `GPUPOOL_GPU_INDICES` (node-local indices) and `GPUPOOL_GPU_SHARING_MODE`;
simulated cards (no real device behind them, e.g. a demo node) give `CUDA_VISIBLE_DEVICES=""` and
`GPUPOOL_GPU_SIMULATED=1`, as the executor's plain `gpu_env` does. Variables of this module supersede that
function's: same names and meaning, plus the per-mode set-up.
"""

from __future__ import annotations

import math
import os
import py_compile
import secrets
import stat
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gpupool.domain.errors import ValidationError
from gpupool.domain.nodes import Gpu
from gpupool.domain.placement import GpuAssignment
from gpupool.domain.resources import MILLI_PER_GPU, SharingMode
from gpupool.gpu import _sitecustomize
from gpupool.gpu.mps import mps_paths

PATH_LIKE = {"PYTHONPATH": os.pathsep, "LD_PRELOAD": ":"}


@dataclass(frozen=True, slots=True)
class SharingConfig:
    """Node-level settings: `home` is $GPUPOOL_HOME (MPS pipe/log dirs and the sitecustomize directory live
    under it); `hami_library` the admin-configured path of HAMi-core's libvgpu.so (None: not used)."""

    home: Path
    hami_library: Path | None = None
    hami_lock_dir: Path = Path("/tmp/vgpulock")

    @property
    def sitecustomize_dir(self) -> Path:
        """The directory put first on PYTHONPATH for replicas on shared GPUs."""
        return self.home / "gpu" / "pythonpath"

    @property
    def hami_cache_root(self) -> Path:
        """Where each replica's HAMi-core shared cache file lives."""
        return self.home / "gpu" / "hami"

    def hami_cache_file(self, replica_id: int) -> Path:
        """A new HAMi-core shared cache file name for one replica (its id in the store, then 16 random hex
        digits), in `hami_cache_root` (created, mode 1733)."""
        _shared_dir(self.hami_cache_root, 0o1733)
        return self.hami_cache_root / f"{replica_id}.{secrets.token_hex(8)}.cache"


@dataclass(frozen=True, slots=True)
class GpuEnvironment:
    """Variables to set, variables to prepend to (PYTHONPATH, LD_PRELOAD), the mode used, and notes on
    what is enforced (shown to users in the workload's events)."""

    variables: Mapping[str, str]
    prepend: Mapping[str, str] = field(default_factory=dict)
    mode: SharingMode | None = None
    notes: tuple[str, ...] = ()

    def merged_into(self, base: Mapping[str, str]) -> dict[str, str]:
        """`base` (e.g. the workload's own env) with these variables set and the path-like ones prepended."""
        env = {**base, **self.variables}
        for name, value in self.prepend.items():
            current = base.get(name, "")
            env[name] = f"{value}{PATH_LIKE[name]}{current}" if current else value
        return env


def install_sitecustomize(config: SharingConfig) -> Path:
    """Write the PyTorch memory-cap `sitecustomize.py` into `config.sitecustomize_dir` (atomically, only
    when its content changed), compile it (replicas that cannot write there still start from bytecode) and
    return the directory. Call once at node start-up."""
    folder = config.sitecustomize_dir
    folder.mkdir(parents=True, exist_ok=True)
    source = Path(_sitecustomize.__file__).read_text()
    target = folder / "sitecustomize.py"
    if not target.exists() or target.read_text() != source:
        with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp") as handle:
            handle.write(source)
        Path(handle.name).replace(target)
        py_compile.compile(str(target), doraise=False)
    if config.hami_library is not None:
        _shared_dir(config.hami_lock_dir, 0o1777)  # HAMi-core's README: create it before running
        _shared_dir(config.hami_cache_root, 0o1733)
    return folder


def _shared_dir(folder: Path, mode: int) -> None:
    """Create `folder` with `mode` (sticky and writable by all: replicas of every user write there)."""
    folder.mkdir(parents=True, exist_ok=True)
    if stat.S_IMODE(folder.stat().st_mode) != mode:
        folder.chmod(mode)


def sweep_hami_caches(config: SharingConfig, live_replica_ids: set[int]) -> list[Path]:
    """Remove the HAMi-core cache files of replicas that are no longer live; returns what was removed.
    Level-triggered: safe to call on every sampler pass, and after a restart."""
    removed = []
    try:
        entries = sorted(config.hami_cache_root.iterdir())
    except OSError:
        return []
    for entry in entries:
        replica = entry.name.split(".", 1)[0]
        if entry.name.endswith(".cache") and replica.isdigit() and int(replica) not in live_replica_ids:
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def gpu_environment(assignments: Sequence[GpuAssignment], gpus: Sequence[Gpu], config: SharingConfig,
                    replica_id: int | None = None) -> GpuEnvironment:
    """The GPU environment of a replica given `assignments` on a node whose cards are `gpus`. `replica_id`
    (the replica's id in the store) names its own HAMi-core cache file (a new name on every call).

    Raises ValidationError when an assignment names a card (or MIG instance) the node does not have.
    """
    if not assignments:
        return GpuEnvironment({"CUDA_VISIBLE_DEVICES": ""}, notes=("no GPU assigned",))
    env = _environment(assignments, gpus, config, replica_id)
    indices = {"GPUPOOL_GPU_INDICES": ",".join(str(a.index) for a in assignments)}
    return GpuEnvironment({**env.variables, **indices}, env.prepend, env.mode, env.notes)


def _environment(assignments: Sequence[GpuAssignment], gpus: Sequence[Gpu], config: SharingConfig,
                 replica_id: int | None) -> GpuEnvironment:
    by_index = {g.index: g for g in gpus}
    pairs = []
    for a in assignments:
        card = by_index.get(a.index)
        if card is None:
            raise ValidationError(f"GPU {a.index} is not a card of this node (cards: {sorted(by_index)})")
        pairs.append((a, card))
    if any(card.simulated for _, card in pairs):
        return _simulated(pairs)
    if any(a.mig_instance is not None for a, _ in pairs):
        return _mig(pairs)
    if len(pairs) == 1:
        a, card = pairs[0]
        if card.mode == SharingMode.MPS:
            return _mps(a, card, config)
        if card.mode == SharingMode.SHARED and _is_share(a, card):
            return _shared(a, card, config, replica_id)
    return _whole(pairs)


def _simulated(pairs: list[tuple[GpuAssignment, Gpu]]) -> GpuEnvironment:
    variables = {"CUDA_VISIBLE_DEVICES": "", "GPUPOOL_GPU_SIMULATED": "1",
                 "GPUPOOL_GPU_SHARING_MODE": pairs[0][1].mode.value}
    if len(pairs) == 1 and _is_share(*pairs[0]):
        variables["GPUPOOL_GPU_MILLI"] = str(pairs[0][0].milli)
        variables["GPUPOOL_GPU_MEMORY_LIMIT_MIB"] = str(pairs[0][0].memory_mib or pairs[0][1].memory_mib)
    return GpuEnvironment(variables, mode=pairs[0][1].mode, notes=("simulated GPUs: no device is visible",))


def _is_share(a: GpuAssignment, card: Gpu) -> bool:
    return a.milli < MILLI_PER_GPU or 0 < a.memory_mib < card.memory_mib


def _uuid(card: Gpu) -> str:
    return card.uuid or str(card.index)


def _whole(pairs: list[tuple[GpuAssignment, Gpu]]) -> GpuEnvironment:
    uuids = [_uuid(card) for _, card in pairs]
    return GpuEnvironment(
        {"CUDA_VISIBLE_DEVICES": ",".join(uuids), "GPUPOOL_GPU_UUIDS": ",".join(uuids),
         "GPUPOOL_GPU_SHARING_MODE": SharingMode.EXCLUSIVE.value},
        mode=SharingMode.EXCLUSIVE, notes=("whole GPUs: exclusive use enforced by the scheduler",))


def _shared(a: GpuAssignment, card: Gpu, config: SharingConfig, replica_id: int | None) -> GpuEnvironment:
    limit = a.memory_mib or card.memory_mib
    variables = {
        "CUDA_VISIBLE_DEVICES": _uuid(card), "GPUPOOL_GPU_UUIDS": _uuid(card),
        "GPUPOOL_GPU_SHARING_MODE": SharingMode.SHARED.value,
        "GPUPOOL_GPU_MEMORY_LIMIT_MIB": str(limit), "GPUPOOL_GPU_MILLI": str(a.milli),
    }
    if config.hami_library is not None:
        variables["CUDA_DEVICE_MEMORY_LIMIT"] = f"{limit}m"
        variables["CUDA_DEVICE_SM_LIMIT"] = str(_percent(a.milli))
        if replica_id is not None:
            variables["CUDA_DEVICE_MEMORY_SHARED_CACHE"] = str(config.hami_cache_file(replica_id))
        return GpuEnvironment(variables, {"LD_PRELOAD": str(config.hami_library)}, SharingMode.SHARED, (
            f"time-sliced GPU: HAMi-core enforces {limit} MiB and {_percent(a.milli)}% of the SMs",))
    return GpuEnvironment(variables, {"PYTHONPATH": str(config.sitecustomize_dir)}, SharingMode.SHARED, (
        f"time-sliced GPU: PyTorch's allocator is capped at {limit} MiB; other CUDA memory is not enforced, "
        "only watched (over-use is reported)",))


def _mps(a: GpuAssignment, card: Gpu, config: SharingConfig) -> GpuEnvironment:
    paths = mps_paths(config.home, _uuid(card))
    limit = a.memory_mib or card.memory_mib
    percent = _percent(a.milli)
    variables = {
        "CUDA_VISIBLE_DEVICES": "0", "GPUPOOL_GPU_UUIDS": _uuid(card),
        "GPUPOOL_GPU_SHARING_MODE": SharingMode.MPS.value, "GPUPOOL_GPU_MEMORY_LIMIT_MIB": str(limit),
        "GPUPOOL_GPU_MILLI": str(a.milli),
        "CUDA_MPS_PIPE_DIRECTORY": str(paths.pipe_dir), "CUDA_MPS_LOG_DIRECTORY": str(paths.log_dir),
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(percent),
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": f"0={limit}M",
    }
    return GpuEnvironment(variables, mode=SharingMode.MPS, notes=(
        f"MPS client: {percent}% of the SMs and {limit} MiB of device memory, enforced by the MPS server",))


def _mig(pairs: list[tuple[GpuAssignment, Gpu]]) -> GpuEnvironment:
    uuids = []
    for a, card in pairs:
        position = a.mig_instance
        if position is None or not 0 <= position < len(card.mig_instances):
            raise ValidationError(f"GPU {card.index} has no MIG instance {position} "
                                  f"(it has {len(card.mig_instances)}); the layout changed since placement")
        uuid = card.mig_instances[position].uuid
        uuids.append(uuid if uuid.startswith("MIG-") else f"MIG-{uuid}")
    notes = ["MIG instance: compute and memory isolated by the hardware"]
    if len(uuids) > 1:
        notes.append("CUDA enumerates only the first MIG device in one process; start one process per instance")
    return GpuEnvironment(
        {"CUDA_VISIBLE_DEVICES": ",".join(uuids), "GPUPOOL_GPU_UUIDS": ",".join(uuids),
         "GPUPOOL_GPU_SHARING_MODE": SharingMode.MIG.value},
        mode=SharingMode.MIG, notes=tuple(notes))


def _percent(milli: int) -> int:
    """A share in milli-GPU as a whole percentage, rounded up, between 1 and 100."""
    return max(1, min(100, math.ceil(milli * 100 / MILLI_PER_GPU)))


def mode_change_conflict(card: Gpu, new: SharingMode, running: Sequence[GpuAssignment]) -> str | None:
    """Why `card` cannot switch to sharing mode `new` now, or None when it can.

    A card without running work may switch to any mode (a card whose MIG instances exist leaves `mig` only
    through `set-mig ... none`). With running work only changes that leave every running replica's set-up
    valid are allowed: exclusive -> shared (whole cards stay whole), shared -> exclusive when only whole
    cards run. Anything to or from `mps` (running replicas are, or are not, MPS clients of a daemon) and
    to or from `mig` (a re-partition) needs the card idle.
    """
    if card.mode == SharingMode.MIG and card.mig_instances and new != SharingMode.MIG:
        return (f"GPU {card.index} is partitioned into {len(card.mig_instances)} MIG instance(s); remove them "
                "first with `gpupool nodes set-mig NODE GPU none`")
    if new == card.mode or not running:
        return None
    busy = f"GPU {card.index} has {len(running)} running replica(s)"
    if SharingMode.MIG in (card.mode, new):
        return f"{busy}; changing to or from mig mode needs the card idle (stop the work or wait for it to end)"
    if SharingMode.MPS in (card.mode, new):
        return (f"{busy}; they are {'' if card.mode == SharingMode.MPS else 'not '}MPS clients, so switching to "
                f"{new.value} needs the card idle (stop the work or wait for it to end)")
    if new == SharingMode.EXCLUSIVE and any(_is_share(a, card) for a in running):
        return f"{busy} holding shares of it; exclusive mode takes whole cards only (wait for the shares to end)"
    return None
