"""`FakeMig`: `gpu.mig.MigNvml` on a `FakeGpuState`, recording the NVML calls it receives and checking
placements as the hardware does. Split from `gpu/fake_nvml.py`.

What the fake can script (see `FakeCard`): a card whose MIG mode change waits for a reset (`mig_needs_reset`)
or is refused with an activation status (`mig_activation`: the NVML return code nvmlDeviceSetMigMode
reports, e.g. NVML_ERROR_IN_USE), and half-applied layouts (GPU instances without a compute instance).
"""

from __future__ import annotations

from typing import Any

import pynvml

from gpupool.gpu.fake_nvml import FakeCard, FakeGpuInstance, FakeGpuState, _CiHandle, _error, _GiHandle
from gpupool.gpu.mig import GpuInstanceRef, MigModel


class FakeMig:
    """`gpu.mig.MigNvml` on a FakeGpuState. `calls` records (NVML function, arguments) in order;
    placements are checked like the hardware does (allowed start, no overlap, enough slices).
    `fail_next[name] = code` makes the next call of NVML function `name` raise NVMLError(code), once (a
    step that fails half-way through applying a layout)."""

    def __init__(self, state: FakeGpuState) -> None:
        self.state = state
        self.calls: list[tuple[Any, ...]] = []
        self.fail_next: dict[str, int] = {}

    def _record(self, *call: Any) -> None:
        self.calls.append(call)
        code = self.fail_next.pop(call[0], None)
        if code is not None:
            raise _error(code)

    def _card(self, gpu: int) -> FakeCard:
        card = self.state.cards[gpu]
        if card.mig_model is None:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return card

    def _model(self, gpu: int) -> MigModel:
        model = self._card(gpu).mig_model
        assert model is not None  # _card refused cards without MIG
        return model

    def get_mig_mode(self, gpu: int) -> tuple[bool, bool]:
        self._record("nvmlDeviceGetMigMode", gpu)
        card = self._card(gpu)
        return card.mig_enabled, card.mig_pending

    def set_mig_mode(self, gpu: int, enabled: bool) -> int:
        self._record("nvmlDeviceSetMigMode", gpu, int(enabled))
        card = self._card(gpu)
        card.mig_pending = enabled
        if card.mig_activation:
            return card.mig_activation  # the mode change is pending: the activation status says why
        if card.mig_needs_reset:
            return int(pynvml.NVML_ERROR_RESET_REQUIRED)
        card.mig_enabled = enabled
        return int(pynvml.NVML_SUCCESS)

    def gpu_instance_profile(self, gpu: int, nvml_profile: int) -> tuple[int, int]:
        self._record("nvmlDeviceGetGpuInstanceProfileInfo", gpu, nvml_profile)
        model = self._card(gpu).mig_model
        for p in model.profiles if model else ():
            if p.nvml_profile == nvml_profile:
                return p.profile_id, p.compute_slices
        raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def gpu_instances(self, gpu: int) -> list[GpuInstanceRef]:
        self._record("nvmlDeviceGetGpuInstances", gpu)
        return [GpuInstanceRef(_GiHandle(gpu, gi.id), gi.id, gi.profile.profile_id, gi.start, gi.profile.memory_slices)
                for gi in self._card(gpu).instances]

    def _instance(self, ref: GpuInstanceRef) -> tuple[FakeCard, FakeGpuInstance]:
        handle = ref.handle
        if not isinstance(handle, _GiHandle):
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        card = self._card(handle.gpu)
        for gi in card.instances:
            if gi.id == handle.gi_id:
                return card, gi
        raise _error(pynvml.NVML_ERROR_NOT_FOUND)

    def compute_instances(self, gi: GpuInstanceRef) -> list[object]:
        self._record("nvmlGpuInstanceGetComputeInstances", gi.id)
        card, instance = self._instance(gi)
        return [_CiHandle(_GiHandle(card.index, gi.id), ci) for ci in instance.compute]

    def destroy_compute_instance(self, ci: object) -> None:
        if not isinstance(ci, _CiHandle):
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self._record("nvmlComputeInstanceDestroy", ci.gi.gi_id, ci.ci_id)
        _, instance = self._instance(GpuInstanceRef(ci.gi, ci.gi.gi_id, 0, 0, 0))
        instance.compute.remove(ci.ci_id)

    def destroy_gpu_instance(self, gi: GpuInstanceRef) -> None:
        self._record("nvmlGpuInstanceDestroy", gi.id)
        card, instance = self._instance(gi)
        if instance.compute:
            raise _error(pynvml.NVML_ERROR_IN_USE)
        card.instances.remove(instance)

    def create_gpu_instance(self, gpu: int, profile_id: int, start: int, size: int) -> GpuInstanceRef:
        self._record("nvmlDeviceCreateGpuInstanceWithPlacement", gpu, profile_id, start, size)
        card = self._card(gpu)
        model = self._model(gpu)
        profile = next((p for p in model.profiles if p.profile_id == profile_id), None)
        taken = {i for gi in card.instances for i in range(gi.start, gi.start + gi.profile.memory_slices)}
        compute = sum(gi.profile.compute_slices for gi in card.instances)
        if (not card.mig_enabled or profile is None or start not in profile.placements
                or size != profile.memory_slices or taken & set(range(start, start + size))
                or compute + profile.compute_slices > model.compute_slices):
            raise _error(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES)
        gi_id = max((gi.id for gi in card.instances), default=0) + 1
        card.instances.append(FakeGpuInstance(gi_id, profile, start))
        card.instances.sort(key=lambda gi: gi.id)
        return GpuInstanceRef(_GiHandle(gpu, gi_id), gi_id, profile_id, start, size)

    def compute_instance_profile_id(self, gi: GpuInstanceRef, nvml_profile: int) -> int:
        self._record("nvmlGpuInstanceGetComputeInstanceProfileInfo", gi.id, nvml_profile)
        return nvml_profile

    def create_compute_instance(self, gi: GpuInstanceRef, profile_id: int) -> object:
        self._record("nvmlGpuInstanceCreateComputeInstance", gi.id, profile_id)
        card, instance = self._instance(gi)
        instance.compute.append(0)
        instance.uuid = card.new_mig_uuid(instance.id)
        return _CiHandle(_GiHandle(card.index, instance.id), 0)

