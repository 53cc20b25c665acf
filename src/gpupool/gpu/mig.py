"""MIG: the profile catalog per GPU model, layout validation, and applying a layout through NVML.

Catalog source: NVIDIA Multi-Instance GPU User Guide, "Supported MIG Profiles"
(https://docs.nvidia.com/datacenter/tesla/mig-user-guide/supported-mig-profiles.html) for the profiles,
their fractions of compute (SM) and memory slices and the number of instances; the placements (start
positions on the memory-slice axis) are those `nvidia-smi mig -lgipp` lists in the guide's "Getting
Started" section (A100/H100/H200: 1g {0..6}:1, 1g double-memory {0,2,4,6}:2, 2g {0,2,4}:2, 3g {0,4}:4,
4g {0}:4, 7g {0}:8; A30: 1g {0..3}:1, 2g {0,2}:2, 4g {0}:4). Media-extension profiles (`+me`) are left
out: they have the same compute and memory as their base profile.

H200 (141 GB): the profile names and the most instances of each (1g.18gb x7, 1g.35gb x4, 2g.35gb x3,
3g.71gb x2, 4g.71gb x1, 7g.141gb x1) are checked against NVIDIA's own MIG configurations in
NVIDIA/mig-parted, deployments/systemd/config-default.yaml ("H200-141GB" entries, and "all-balanced" for
device ids 0x233510DE / 0x233B10DE = H200 141GB, H200 NVL). The profile ids, instance counts, NVML profile
constants and placements of the H200 row were then read off an H200 (0x233510DE, driver 580.159.04) with
`nvidia-smi mig -lgip`, `-lgipp` and nvmlDeviceGetGpuInstanceProfileInfo: they match (docs/gpu.md).

Applying a layout follows the NVML "Multi Instance GPU Management" API
(https://docs.nvidia.com/deploy/nvml-api/group__nvmlMultiInstanceGPU.html): nvmlDeviceSetMigMode to
enable MIG (a GPU reset may be pending), nvmlComputeInstanceDestroy then nvmlGpuInstanceDestroy for the
old instances, then per instance nvmlDeviceGetGpuInstanceProfileInfo (profile id) +
nvmlDeviceCreateGpuInstanceWithPlacement, and nvmlGpuInstanceGetComputeInstanceProfileInfo +
nvmlGpuInstanceCreateComputeInstance for one compute instance spanning the whole GPU instance.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from gpupool.domain.errors import ConflictError, GpupoolError, ValidationError
from gpupool.domain.resources import normalise_model

# NVML_GPU_INSTANCE_PROFILE_* and NVML_COMPUTE_INSTANCE_PROFILE_* values (nvml.h)
GI_1_SLICE, GI_2_SLICE, GI_3_SLICE, GI_4_SLICE, GI_7_SLICE = 0, 1, 2, 3, 4
GI_1_SLICE_REV2 = 9  # the 1g profile with two memory slices (1g.10gb on A100-40GB, 1g.20gb on H100)
CI_PROFILE_FOR_SLICES = {1: 0, 2: 1, 3: 2, 4: 3, 7: 4}
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class MigProfile:
    """One GPU-instance profile of a model: slices taken, how many fit, and where it may start.

    `profile_id` is the id nvidia-smi shows (and NVML returns in the profile info); `nvml_profile` the
    NVML_GPU_INSTANCE_PROFILE_* constant used to look it up; `placements` the allowed start positions on
    the memory-slice axis (an instance covers `memory_slices` positions from its start).
    """

    name: str
    compute_slices: int
    memory_slices: int
    max_instances: int
    profile_id: int
    nvml_profile: int
    placements: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class MigModel:
    """The MIG geometry of one GPU model."""

    key: str
    compute_slices: int
    memory_slices: int
    profiles: tuple[MigProfile, ...]

    def profile(self, name: str) -> MigProfile:
        """The profile called `name`; ValidationError naming the valid ones otherwise."""
        wanted = name.strip().lower().removesuffix("+me")
        for p in self.profiles:
            if p.name == wanted:
                return p
        valid = ", ".join(p.name for p in self.profiles)
        raise ValidationError(f"{name!r} is not a MIG profile of the {self.key}; valid profiles: {valid}", "mig")


def _seven_slice_model(key: str, sizes: tuple[int, int, int, int, int]) -> MigModel:
    """A100/H100/H200 geometry: 7 compute slices, 8 memory slices. `sizes` are the GB in the profile names:
    1g, 1g with two memory slices, 2g, 3g and 4g (both four memory slices), and 7g (the whole card)."""
    one, one_double, two, three, full = sizes
    return MigModel(key, 7, 8, (
        MigProfile(f"1g.{one}gb", 1, 1, 7, 19, GI_1_SLICE, (0, 1, 2, 3, 4, 5, 6)),
        MigProfile(f"1g.{one_double}gb", 1, 2, 4, 15, GI_1_SLICE_REV2, (0, 2, 4, 6)),
        MigProfile(f"2g.{two}gb", 2, 2, 3, 14, GI_2_SLICE, (0, 2, 4)),
        MigProfile(f"3g.{three}gb", 3, 4, 2, 9, GI_3_SLICE, (0, 4)),
        MigProfile(f"4g.{three}gb", 4, 4, 1, 5, GI_4_SLICE, (0,)),
        MigProfile(f"7g.{full}gb", 7, 8, 1, 0, GI_7_SLICE, (0,)),
    ))


CATALOG: dict[str, MigModel] = {
    "A100-40GB": _seven_slice_model("A100-40GB", (5, 10, 10, 20, 40)),
    "A100-80GB": _seven_slice_model("A100-80GB", (10, 20, 20, 40, 80)),
    "H100-80GB": _seven_slice_model("H100-80GB", (10, 20, 20, 40, 80)),
    "H200": _seven_slice_model("H200", (18, 35, 35, 71, 141)),
    "A30": MigModel("A30", 4, 4, (
        MigProfile("1g.6gb", 1, 1, 4, 14, GI_1_SLICE, (0, 1, 2, 3)),
        MigProfile("2g.12gb", 2, 2, 2, 5, GI_2_SLICE, (0, 2)),
        MigProfile("4g.24gb", 4, 4, 1, 0, GI_4_SLICE, (0,)),
    )),
}


def catalog_for(model: str, memory_mib: int = 0) -> MigModel | None:
    """The catalog entry of a GPU model name as NVML reports it ("NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB
    HBM3", "NVIDIA A30") or a catalog key ("A100-80GB"); the card memory tells A100 40GB from 80GB when the
    name does not. None for models without MIG (or not in the catalog)."""
    name = normalise_model(model)
    if name in CATALOG:
        return CATALOG[name]
    family = name.split("-")[0]
    if family == "A100":
        big = "80GB" in name or memory_mib > 60 * 1024
        return CATALOG["A100-80GB" if big else "A100-40GB"]
    if family == "H100" and "NVL" not in name and (memory_mib == 0 or memory_mib < 88 * 1024):
        return CATALOG["H100-80GB"]
    if family in ("H200", "A30"):
        return CATALOG[family]
    return None


def parse_layout(text: str | Sequence[str]) -> tuple[str, ...]:
    """'3g.40gb,2g.20gb,1g.10gb,1g.10gb' (or a list) -> profile names; '' or 'none' -> () (MIG off)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(i.strip().lower() for i in items if i.strip())
    return () if names in ((), ("none",)) else names


@dataclass(frozen=True, slots=True)
class PlannedInstance:
    """One instance of a validated layout: its profile and memory-slice start position."""

    profile: MigProfile
    start: int


def validate_layout(model: MigModel, layout: Sequence[str]) -> tuple[PlannedInstance, ...]:
    """Check that `layout` fits the card and return a placement for every instance.

    A layout fits when each profile stays within its maximum count, the compute slices add up to at most
    the card's, and every instance gets a start position from its allowed placements without two
    instances sharing a memory slice (searched exhaustively, largest first). Raises ValidationError with
    the arithmetic otherwise.
    """
    profiles = [model.profile(name) for name in layout]
    for profile, count in Counter(profiles).items():
        if count > profile.max_instances:
            raise ValidationError(f"an {model.key} holds at most {profile.max_instances} x {profile.name} "
                                  f"(asked for {count})", "mig")
    compute = sum(p.compute_slices for p in profiles)
    memory = sum(p.memory_slices for p in profiles)
    if compute > model.compute_slices or memory > model.memory_slices:
        raise ValidationError(f"layout {','.join(layout)} needs {compute} compute and {memory} memory slices; "
                              f"an {model.key} has {model.compute_slices} and {model.memory_slices}", "mig")
    order = sorted(range(len(profiles)), key=lambda k: (-profiles[k].memory_slices, -profiles[k].compute_slices, k))
    starts = _place([profiles[k] for k in order], [False] * model.memory_slices)
    if starts is None:
        raise ValidationError(f"layout {','.join(layout)} fits the slice counts of an {model.key} but not its "
                              "placement rules (each profile may start only at fixed memory slices); "
                              "try smaller or fewer instances", "mig")
    placed = {k: PlannedInstance(profiles[k], s) for k, s in zip(order, starts, strict=True)}
    return tuple(sorted(placed.values(), key=lambda p: p.start))


def _place(profiles: list[MigProfile], used: list[bool]) -> list[int] | None:
    if not profiles:
        return []
    head, rest = profiles[0], profiles[1:]
    for start in head.placements:
        span = range(start, start + head.memory_slices)
        if span.stop > len(used) or any(used[i] for i in span):
            continue
        for i in span:
            used[i] = True
        tail = _place(rest, used)
        for i in span:
            used[i] = False
        if tail is not None:
            return [start, *tail]
    return None


# ------------------------------------------------------------------------------------------ applying
@dataclass(frozen=True, slots=True)
class GpuInstanceRef:
    """An existing GPU instance: an opaque NVML handle plus its id, profile id and placement."""

    handle: object
    id: int
    profile_id: int
    start: int
    size: int


class MigNvml(Protocol):
    """The NVML calls applying a layout needs, one method per NVML function (named in each docstring);
    errors are raised as the library raises them. `gpu` is the node-local GPU index."""

    def get_mig_mode(self, gpu: int) -> tuple[bool, bool]:
        """nvmlDeviceGetMigMode: (current, pending) MIG enabled."""

    def set_mig_mode(self, gpu: int, enabled: bool) -> int:
        """nvmlDeviceSetMigMode: its activation status, an NVML return code (0: the mode is active now;
        NVML_ERROR_IN_USE, NVML_ERROR_RESET_REQUIRED, ...: it is pending, and why)."""

    def gpu_instance_profile(self, gpu: int, nvml_profile: int) -> tuple[int, int]:
        """nvmlDeviceGetGpuInstanceProfileInfo: (profile id, slice count) of an NVML profile constant."""

    def gpu_instances(self, gpu: int) -> list[GpuInstanceRef]:
        """nvmlDeviceGetGpuInstances over every profile: the GPU instances that exist now."""

    def compute_instances(self, gi: GpuInstanceRef) -> list[object]:
        """nvmlGpuInstanceGetComputeInstances over every profile: compute instance handles of `gi`."""

    def destroy_compute_instance(self, ci: object) -> None:
        """nvmlComputeInstanceDestroy."""

    def destroy_gpu_instance(self, gi: GpuInstanceRef) -> None:
        """nvmlGpuInstanceDestroy."""

    def create_gpu_instance(self, gpu: int, profile_id: int, start: int, size: int) -> GpuInstanceRef:
        """nvmlDeviceCreateGpuInstanceWithPlacement."""

    def compute_instance_profile_id(self, gi: GpuInstanceRef, nvml_profile: int) -> int:
        """nvmlGpuInstanceGetComputeInstanceProfileInfo (shared engines): the compute profile id."""

    def create_compute_instance(self, gi: GpuInstanceRef, profile_id: int) -> object:
        """nvmlGpuInstanceCreateComputeInstance."""


class MigApplyError(GpupoolError):
    """NVML refused a step of applying a MIG layout (the message says which step and what exists now)."""


@dataclass(frozen=True, slots=True)
class MigApplyResult:
    """What apply_layout did: `status` is "applied", "unchanged", "disabled" or "pending_reset" (the MIG mode
    change is pending: `cause` says why, from nvmlDeviceSetMigMode's activation status)."""

    gpu: int
    status: str
    layout: tuple[str, ...]
    destroyed: int = 0
    message: str = ""
    cause: str = ""


# nvmlDeviceSetMigMode's activation status (NVML return codes, nvml.h) -> (cause, what to do)
_ACTIVATION = {
    19: ("in_use", "processes are using the GPU: stop them (nvidia-smi shows them), then apply the layout again"),
    16: ("reset_required", "a GPU reset is required (nvidia-smi -r -i {gpu} with no process on the card, or a "
                           "reboot; in a VM with pass-through, a VM reboot); then apply the layout again"),
    4: ("no_permission", "changing the MIG mode needs root: run the server as root or enable MIG with "
                         "nvidia-smi -i {gpu} -mig 1"),
}


def activation_cause(status: int, gpu: int) -> tuple[str, str]:
    """(cause, advice) for a non-zero activation status of nvmlDeviceSetMigMode."""
    cause, advice = _ACTIVATION.get(status, (f"nvml_error_{status}", f"NVML return code {status}; see the "
                                             "NVML reference, nvmlDeviceSetMigMode"))
    return cause, advice.format(gpu=gpu)


def apply_layout(nvml: MigNvml, gpu: int, model: MigModel, layout: Sequence[str], busy: bool) -> MigApplyResult:
    """Partition GPU `gpu` (node-local index) into `layout` (empty: turn MIG off).

    Refuses (ConflictError) when `busy` (the caller knows whether work runs on the card). Validates the
    layout first, enables MIG mode when needed (returns "pending_reset" when the mode change waits for a
    GPU reset), leaves the GPU alone when it already has exactly these profiles, else destroys every
    compute and GPU instance and creates the new ones at the validated placements. NVML errors become
    MigApplyError; after one, calling again starts from whatever exists (it is destroyed first).
    """
    layout = tuple(layout)
    if busy:
        raise ConflictError(f"GPU {gpu} has running work; stop it (or wait for it to end) before changing its "
                            "MIG layout")
    if not layout:
        return _disable(nvml, gpu)
    plan = validate_layout(model, layout)
    current, _ = _step("read the MIG mode", nvml.get_mig_mode, gpu)
    if not current:
        status = _step("enable MIG mode", nvml.set_mig_mode, gpu, True)
        current, _ = _step("read the MIG mode", nvml.get_mig_mode, gpu)
        if not current or status:
            cause, advice = activation_cause(int(status or 16), gpu)
            return MigApplyResult(gpu, "pending_reset", layout, cause=cause, message=(
                f"MIG mode on GPU {gpu} is enabled but not active yet: {advice}"))
    ids = [_step(f"look up profile {p.profile.name}",
                 nvml.gpu_instance_profile, gpu, p.profile.nvml_profile)[0] for p in plan]
    existing = _step("list GPU instances", nvml.gpu_instances, gpu)
    if _matches(nvml, existing, [(profile_id, p.start) for p, profile_id in zip(plan, ids, strict=True)]):
        return MigApplyResult(gpu, "unchanged", layout, message=f"GPU {gpu} already has this layout")
    destroyed = _destroy_all(nvml, existing)
    for planned, profile_id in zip(plan, ids, strict=True):
        _create(nvml, gpu, planned, profile_id)
    return MigApplyResult(gpu, "applied", layout, destroyed, f"GPU {gpu} now holds {','.join(layout)}")


def _matches(nvml: MigNvml, existing: list[GpuInstanceRef], wanted: list[tuple[int, int]]) -> bool:
    """True when the GPU instances are exactly `wanted` ((profile id, start) pairs) and each has a compute
    instance; after a half-failed apply (an instance missing, or one without its compute instance) it is
    False, so the layout is rebuilt rather than reported unchanged."""
    if sorted((gi.profile_id, gi.start) for gi in existing) != sorted(wanted):
        return False
    return all(_step(f"list compute instances of GPU instance {gi.id}", nvml.compute_instances, gi)
               for gi in existing)


def _disable(nvml: MigNvml, gpu: int) -> MigApplyResult:
    current, _ = _step("read the MIG mode", nvml.get_mig_mode, gpu)
    destroyed = _destroy_all(nvml, _step("list GPU instances", nvml.gpu_instances, gpu)) if current else 0
    status = _step("disable MIG mode", nvml.set_mig_mode, gpu, False)
    if status:
        cause, advice = activation_cause(int(status), gpu)
        return MigApplyResult(gpu, "pending_reset", (), destroyed, cause=cause, message=(
            f"MIG mode on GPU {gpu} is disabled but still active: {advice}"))
    return MigApplyResult(gpu, "disabled", (), destroyed, f"MIG mode disabled on GPU {gpu}")


def _destroy_all(nvml: MigNvml, instances: list[GpuInstanceRef]) -> int:
    for gi in instances:
        for ci in _step(f"list compute instances of GPU instance {gi.id}", nvml.compute_instances, gi):
            _step(f"destroy a compute instance of GPU instance {gi.id}",
                  nvml.destroy_compute_instance, ci)
        _step(f"destroy GPU instance {gi.id}", nvml.destroy_gpu_instance, gi)
    return len(instances)


def _create(nvml: MigNvml, gpu: int, planned: PlannedInstance, profile_id: int) -> None:
    p = planned.profile
    gi = _step(f"create {p.name} at memory slice {planned.start}",
               nvml.create_gpu_instance, gpu, profile_id, planned.start, p.memory_slices)
    ci_profile = CI_PROFILE_FOR_SLICES[p.compute_slices]
    ci_id = _step(f"look up the compute profile of {p.name}", nvml.compute_instance_profile_id, gi, ci_profile)
    _step(f"create the compute instance of {p.name}", nvml.create_compute_instance, gi, ci_id)


def _step(what: str, call: Callable[..., T], *args: Any) -> T:
    """call(*args), turning any error but gpupool's own into a MigApplyError naming the step."""
    try:
        return call(*args)
    except GpupoolError:
        raise
    except Exception as error:
        raise MigApplyError(f"NVML could not {what}: {error}") from error


def model_compute_slices(model: str, memory_mib: int = 0) -> int:
    """Compute slices of a card model (7, or 4 on the A30); 7 for models outside the catalog."""
    entry = catalog_for(model, memory_mib)
    return entry.compute_slices if entry else 7
