"""`PynvmlMig`: the NVML calls that apply MIG layouts on real hardware (`gpu.mig.MigNvml` over pynvml).

Split from `gpu/nvml.py` (discovery and sampling); the calls are listed, with their documentation group, in
that module's docstring and in `gpu/mig.py`.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

from gpupool.gpu.mig import GpuInstanceRef
from gpupool.gpu.nvml import load_pynvml


class PynvmlMig:
    """`gpu.mig.MigNvml` over pynvml, for applying MIG layouts on real hardware (needs root).

    Instance lists are read with the ctypes arrays pynvml expects (nvmlDeviceGetGpuInstances and
    nvmlGpuInstanceGetComputeInstances fill a caller-sized array), one NVML profile constant at a time;
    profiles a GPU does not support raise NVML_ERROR_NOT_SUPPORTED and are skipped.
    """

    def __init__(self, load: Callable[[], Any] = load_pynvml) -> None:
        self._nvml = load()
        self._nvml.nvmlInit()

    def close(self) -> None:
        """Shut NVML down (once per instance)."""
        self._nvml.nvmlShutdown()

    def _device(self, gpu: int) -> Any:
        return self._nvml.nvmlDeviceGetHandleByIndex(gpu)

    def get_mig_mode(self, gpu: int) -> tuple[bool, bool]:
        """nvmlDeviceGetMigMode."""
        current, pending = self._nvml.nvmlDeviceGetMigMode(self._device(gpu))
        enabled = self._nvml.NVML_DEVICE_MIG_ENABLE
        return current == enabled, pending == enabled

    def set_mig_mode(self, gpu: int, enabled: bool) -> int:
        """nvmlDeviceSetMigMode; returns its activation status (an NVML return code, 0 when active now)."""
        nvml = self._nvml
        status = nvml.nvmlDeviceSetMigMode(self._device(gpu), nvml.NVML_DEVICE_MIG_ENABLE if enabled
                                           else nvml.NVML_DEVICE_MIG_DISABLE)
        return int(status or 0)

    def gpu_instance_profile(self, gpu: int, nvml_profile: int) -> tuple[int, int]:
        """nvmlDeviceGetGpuInstanceProfileInfo: (profile id, slice count)."""
        info = self._nvml.nvmlDeviceGetGpuInstanceProfileInfo(self._device(gpu), nvml_profile)
        return int(info.id), int(info.sliceCount)

    def gpu_instances(self, gpu: int) -> list[GpuInstanceRef]:
        """nvmlDeviceGetGpuInstances for every supported profile, with nvmlGpuInstanceGetInfo."""
        nvml, device = self._nvml, self._device(gpu)
        found: dict[int, GpuInstanceRef] = {}
        for profile in range(nvml.NVML_GPU_INSTANCE_PROFILE_COUNT):
            try:
                info = nvml.nvmlDeviceGetGpuInstanceProfileInfo(device, profile)
            except nvml.NVMLError:
                continue
            if info.instanceCount == 0:
                continue
            array = (nvml.c_nvmlGpuInstance_t * info.instanceCount)()
            count = ctypes.c_uint(0)
            nvml.nvmlDeviceGetGpuInstances(device, info.id, array, ctypes.byref(count))
            for k in range(count.value):
                ref = self._gpu_instance_ref(array[k])
                found[ref.id] = ref
        return [found[k] for k in sorted(found)]

    def _gpu_instance_ref(self, handle: Any) -> GpuInstanceRef:
        info = self._nvml.nvmlGpuInstanceGetInfo(handle)
        return GpuInstanceRef(handle, int(info.id), int(info.profileId), int(info.placement.start),
                              int(info.placement.size))

    def compute_instances(self, gi: GpuInstanceRef) -> list[object]:
        """nvmlGpuInstanceGetComputeInstances for every supported compute profile."""
        nvml = self._nvml
        found: list[object] = []
        for profile in range(nvml.NVML_COMPUTE_INSTANCE_PROFILE_COUNT):
            try:
                info = nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                    gi.handle, profile, nvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
            except nvml.NVMLError:
                continue
            if info.instanceCount == 0:
                continue
            array = (nvml.c_nvmlComputeInstance_t * info.instanceCount)()
            count = ctypes.c_uint(0)
            nvml.nvmlGpuInstanceGetComputeInstances(gi.handle, info.id, array, ctypes.byref(count))
            found += [array[k] for k in range(count.value)]
        return found

    def destroy_compute_instance(self, ci: object) -> None:
        """nvmlComputeInstanceDestroy."""
        self._nvml.nvmlComputeInstanceDestroy(ci)

    def destroy_gpu_instance(self, gi: GpuInstanceRef) -> None:
        """nvmlGpuInstanceDestroy."""
        self._nvml.nvmlGpuInstanceDestroy(gi.handle)

    def create_gpu_instance(self, gpu: int, profile_id: int, start: int, size: int) -> GpuInstanceRef:
        """nvmlDeviceCreateGpuInstanceWithPlacement."""
        nvml = self._nvml
        placement = nvml.c_nvmlGpuInstancePlacement_t()
        placement.start, placement.size = start, size
        handle = nvml.nvmlDeviceCreateGpuInstanceWithPlacement(self._device(gpu), profile_id,
                                                              ctypes.byref(placement))
        return self._gpu_instance_ref(handle)

    def compute_instance_profile_id(self, gi: GpuInstanceRef, nvml_profile: int) -> int:
        """nvmlGpuInstanceGetComputeInstanceProfileInfo with shared engines."""
        nvml = self._nvml
        info = nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi.handle, nvml_profile,
                                                                 nvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
        return int(info.id)

    def create_compute_instance(self, gi: GpuInstanceRef, profile_id: int) -> object:
        """nvmlGpuInstanceCreateComputeInstance."""
        return self._nvml.nvmlGpuInstanceCreateComputeInstance(gi.handle, profile_id)
