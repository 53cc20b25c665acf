"""GPU discovery and sampling through NVML (the nvidia-ml-py package, imported as `pynvml`).

Every NVML call used here is documented in the NVML API reference (https://docs.nvidia.com/deploy/nvml-api/):
- Initialization and cleanup: nvmlInit, nvmlShutdown.
- System queries: nvmlSystemGetDriverVersion, nvmlSystemGetCudaDriverVersion_v2 (e.g. 12040 = CUDA 12.4).
- Device queries: nvmlDeviceGetCount, nvmlDeviceGetHandleByIndex, nvmlDeviceGetIndex, nvmlDeviceGetUUID,
  nvmlDeviceGetName, nvmlDeviceGetMemoryInfo (bytes), nvmlDeviceGetCudaComputeCapability, nvmlDeviceGetPciInfo
  (busId), nvmlDeviceGetUtilizationRates (percent over the last sample period), nvmlDeviceGetPowerUsage
  (milliwatts), nvmlDeviceGetTemperature (NVML_TEMPERATURE_GPU, degrees C), nvmlDeviceGetTotalEccErrors
  (NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC), nvmlDeviceGetComputeRunningProcesses (pid and
  usedGpuMemory in bytes), nvmlDeviceGetP2PStatus (NVML_P2P_CAPS_INDEX_NVLINK: NVLink peers, direct or
  through NVSwitch).
- NvLink methods: nvmlDeviceGetNvLinkState (active links, for information).
- Multi Instance GPU management: nvmlDeviceGetMigMode, nvmlDeviceGetMaxMigDeviceCount,
  nvmlDeviceGetMigDeviceHandleByIndex, nvmlDeviceGetGpuInstanceId, nvmlDeviceGetComputeInstanceId,
  nvmlDeviceGetAttributes (multiprocessorCount, memorySizeMB; documented for MIG device handles, tried on
  full GPUs too: the SM count is reported "where available"), and for applying layouts (`PynvmlMig`):
  nvmlDeviceSetMigMode, nvmlDeviceGetGpuInstanceProfileInfo, nvmlDeviceGetGpuInstances,
  nvmlDeviceCreateGpuInstanceWithPlacement, nvmlGpuInstanceGetInfo, nvmlGpuInstanceDestroy,
  nvmlGpuInstanceGetComputeInstanceProfileInfo, nvmlGpuInstanceGetComputeInstances,
  nvmlGpuInstanceCreateComputeInstance, nvmlComputeInstanceDestroy.
- Events: nvmlEventSetCreate, nvmlDeviceRegisterEvents (nvmlEventTypeXidCriticalError,
  nvmlEventTypeDoubleBitEccError), nvmlEventSetWait_v2 (timeout 0: drain without blocking).

Without NVML (library not installed, no driver, no GPU) the node simply has no GPUs: discovery returns an
empty inventory whose `unavailable` says why, logged once; nothing raises.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from typing import Any

from gpupool.gpu.mig import GpuInstanceRef
from gpupool.gpu.types import (
    MIB,
    GpuErrorEvent,
    GpuInfo,
    GpuInventory,
    GpuReading,
    MigDevice,
    NodeSample,
    ProcessReading,
)

log = logging.getLogger(__name__)
MAX_EVENTS_PER_SAMPLE = 64


def load_pynvml() -> Any:
    """Import nvidia-ml-py's `pynvml` module (ImportError when it is not installed)."""
    import pynvml  # noqa: PLC0415  (optional at run time: a node without it simply has no GPUs)

    return pynvml


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlBackend:
    """GpuBackend over NVML. `load` returns the pynvml module (or a stand-in with the same functions).

    NVML is initialised on first use and kept until `close()`. Device handles are found again on every
    `discover()` so that MIG changes show up.
    """

    name = "nvml"

    def __init__(self, load: Callable[[], Any] = load_pynvml) -> None:
        self._load = load
        self._nvml: Any = None
        self._unavailable: str | None = None
        self._handles: list[Any] = []
        self._mig_handles: dict[int, list[tuple[str, Any]]] = {}
        self._events: Any = None
        self._registered: set[int] = set()
        self._discovered = False

    # ------------------------------------------------------------------------------------ lifecycle
    def _ready(self) -> Any:
        if self._nvml is not None or self._unavailable is not None:
            return self._nvml
        try:
            nvml = self._load()
        except ImportError as error:
            return self._give_up(f"nvidia-ml-py is not installed ({error})")
        try:
            nvml.nvmlInit()
        except Exception as error:  # NVMLError, or anything a broken installation throws
            return self._give_up(_explain_init_error(nvml, error))
        self._nvml = nvml
        return nvml

    def _give_up(self, reason: str) -> None:
        self._unavailable = reason
        log.info("no GPUs on this node: %s", reason)

    def close(self) -> None:
        """Free the event set and shut NVML down; idempotent."""
        nvml, self._nvml = self._nvml, None
        if nvml is None:
            return
        if self._events is not None:
            self._optional(nvml.nvmlEventSetFree, self._events, nvml=nvml)
            self._events = None
        self._registered.clear()
        self._handles, self._mig_handles, self._discovered = [], {}, False
        self._optional(nvml.nvmlShutdown, nvml=nvml)

    def _optional(self, fn: Callable[..., Any], *args: Any, nvml: Any = None) -> Any:
        """fn(*args), or None when NVML reports an error (not supported, no permission, GPU lost)."""
        try:
            return fn(*args)
        except (nvml or self._nvml).NVMLError:
            return None

    # ------------------------------------------------------------------------------------ discovery
    def discover(self) -> GpuInventory:
        """The node's GPUs; an empty inventory with `unavailable` set when NVML cannot be used."""
        nvml = self._ready()
        if nvml is None:
            return GpuInventory(unavailable=self._unavailable)
        try:
            count = nvml.nvmlDeviceGetCount()
            self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except nvml.NVMLError as error:
            log.warning("NVML could not list the GPUs: %s", error)
            return GpuInventory(unavailable=f"NVML could not list the GPUs: {error}")
        if count == 0 and not self._discovered:
            log.info("NVML works but found no GPU on this node")
        self._discovered = True
        infos = [self._describe(i, h) for i, h in enumerate(self._handles)]
        peers = self._nvlink_peers()
        infos = [_with_peers(info, peers.get(info.index, ())) for info in infos]
        self._register_events()
        return GpuInventory(tuple(infos), _driver_version(self), _cuda_version(self))

    def _describe(self, index: int, handle: Any) -> GpuInfo:
        nvml = self._nvml
        try:
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            name = _text(nvml.nvmlDeviceGetName(handle))
            memory_mib = int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // MIB
        except nvml.NVMLError as error:
            log.warning("GPU %d does not answer NVML (%s); it is reported unhealthy", index, error)
            return GpuInfo(index, f"unknown-{index}", "unknown", 0, error=str(error))
        mig = self._optional(nvml.nvmlDeviceGetMigMode, handle)
        mig_enabled = bool(mig and mig[0] == nvml.NVML_DEVICE_MIG_ENABLE)
        attributes = self._optional(nvml.nvmlDeviceGetAttributes, handle)
        cc = self._optional(nvml.nvmlDeviceGetCudaComputeCapability, handle)
        pci = self._optional(nvml.nvmlDeviceGetPciInfo, handle)
        devices = self._mig_devices(index, handle) if mig_enabled else ()
        return GpuInfo(
            index=index, uuid=uuid, name=name, memory_mib=memory_mib,
            sm_count=int(attributes.multiprocessorCount) if attributes else None,
            compute_capability=(int(cc[0]), int(cc[1])) if cc else None,
            mig_enabled=mig_enabled,
            mig_pending=bool(mig and mig[1] == nvml.NVML_DEVICE_MIG_ENABLE),
            mig_devices=devices,
            pci_bus_id=_text(pci.busId) if pci else "",
            nvlink_active_links=self._active_links(handle),
        )

    def _mig_devices(self, index: int, handle: Any) -> tuple[MigDevice, ...]:
        nvml = self._nvml
        found, handles = [], []
        for k in range(self._optional(nvml.nvmlDeviceGetMaxMigDeviceCount, handle) or 0):
            mig = self._optional(nvml.nvmlDeviceGetMigDeviceHandleByIndex, handle, k)
            if mig is None:
                continue  # NVML_ERROR_NOT_FOUND: no MIG device at this position
            uuid = _text(self._optional(nvml.nvmlDeviceGetUUID, mig) or f"MIG-unknown-{index}-{k}")
            attributes = self._optional(nvml.nvmlDeviceGetAttributes, mig)
            name = _text(self._optional(nvml.nvmlDeviceGetName, mig) or "")
            profile = _profile_from(name, attributes)
            found.append(MigDevice(
                uuid=uuid, profile=profile,
                gpu_instance_id=self._optional(nvml.nvmlDeviceGetGpuInstanceId, mig),
                compute_instance_id=self._optional(nvml.nvmlDeviceGetComputeInstanceId, mig),
                memory_mib=int(attributes.memorySizeMB) if attributes else 0,
                sm_count=int(attributes.multiprocessorCount) if attributes else None,
            ))
            handles.append((uuid, mig))
        self._mig_handles[index] = handles
        return tuple(found)

    def _active_links(self, handle: Any) -> int:
        nvml = self._nvml
        active = 0
        for link in range(int(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18))):
            try:
                active += 1 if nvml.nvmlDeviceGetNvLinkState(handle, link) else 0
            except nvml.NVMLError:
                break  # not supported, or past the last link of this GPU
        return active

    def _nvlink_peers(self) -> dict[int, tuple[int, ...]]:
        nvml = self._nvml
        peers: dict[int, list[int]] = {i: [] for i in range(len(self._handles))}
        for a in range(len(self._handles)):
            for b in range(a + 1, len(self._handles)):
                status = self._optional(nvml.nvmlDeviceGetP2PStatus, self._handles[a], self._handles[b],
                                        nvml.NVML_P2P_CAPS_INDEX_NVLINK)
                if status == nvml.NVML_P2P_STATUS_OK:
                    peers[a].append(b)
                    peers[b].append(a)
        return {i: tuple(p) for i, p in peers.items()}

    def _register_events(self) -> None:
        nvml = self._nvml
        if self._events is None:
            self._events = self._optional(nvml.nvmlEventSetCreate)
        if self._events is None:
            return
        wanted = nvml.nvmlEventTypeXidCriticalError | nvml.nvmlEventTypeDoubleBitEccError
        for index, handle in enumerate(self._handles):
            if index in self._registered:
                continue  # registered by an earlier discover(): the device handle has not changed
            self._registered.add(index)
            for types in (wanted, nvml.nvmlEventTypeXidCriticalError):
                try:
                    nvml.nvmlDeviceRegisterEvents(handle, types, self._events)
                    break
                except nvml.NVMLError:
                    continue  # ECC events are not supported on cards without ECC: try XID alone

    # ------------------------------------------------------------------------------------- sampling
    def sample(self, now: float) -> NodeSample:
        """Readings of every GPU, the processes using them, and the XID/ECC events since the last call."""
        nvml = self._ready()
        if nvml is None:
            return NodeSample(now)
        if not self._discovered:
            self.discover()
        readings, processes = [], []
        for index, handle in enumerate(self._handles):
            readings.append(self._reading(index, handle))
            processes += self._processes(index, handle)
        return NodeSample(now, tuple(readings), tuple(processes), self._drain_events())

    def _reading(self, index: int, handle: Any) -> GpuReading:
        nvml = self._nvml
        uuid = _text(self._optional(nvml.nvmlDeviceGetUUID, handle) or f"unknown-{index}")
        util = self._optional(nvml.nvmlDeviceGetUtilizationRates, handle)
        memory = self._optional(nvml.nvmlDeviceGetMemoryInfo, handle)
        power = self._optional(nvml.nvmlDeviceGetPowerUsage, handle)
        temperature = self._optional(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
        ecc = self._optional(nvml.nvmlDeviceGetTotalEccErrors, handle, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                             nvml.NVML_VOLATILE_ECC)
        return GpuReading(
            index=index, uuid=uuid,
            utilization_pct=float(util.gpu) if util is not None else None,
            memory_used_bytes=int(memory.used) if memory is not None else None,
            memory_total_bytes=int(memory.total) if memory is not None else None,
            power_w=power / 1000.0 if power is not None else None,
            temperature_c=float(temperature) if temperature is not None else None,
            ecc_uncorrected=int(ecc) if ecc is not None else None,
        )

    def _processes(self, index: int, handle: Any) -> list[ProcessReading]:
        nvml = self._nvml
        mig = self._mig_handles.get(index)
        sources = mig if mig else [(None, handle)]  # in MIG mode, per-process memory is per MIG device
        found = []
        for mig_uuid, source in sources:
            for proc in self._optional(nvml.nvmlDeviceGetComputeRunningProcesses, source) or ():
                used = proc.usedGpuMemory
                found.append(ProcessReading(index, int(proc.pid), int(used) if used is not None else None, mig_uuid))
        return found

    def _drain_events(self) -> tuple[GpuErrorEvent, ...]:
        nvml = self._nvml
        if self._events is None:
            return ()
        events = []
        for _ in range(MAX_EVENTS_PER_SAMPLE):
            try:
                data = nvml.nvmlEventSetWait_v2(self._events, 0)
            except nvml.NVMLError:
                break  # NVML_ERROR_TIMEOUT: nothing (more) pending
            index = self._optional(nvml.nvmlDeviceGetIndex, data.device)
            if index is None:
                continue
            if data.eventType & nvml.nvmlEventTypeXidCriticalError:
                events.append(GpuErrorEvent(int(index), "xid", int(data.eventData), f"XID {int(data.eventData)}"))
            elif data.eventType & nvml.nvmlEventTypeDoubleBitEccError:
                events.append(GpuErrorEvent(int(index), "ecc", 1, "double-bit (uncorrectable) ECC error"))
        return tuple(events)


def _with_peers(info: GpuInfo, peers: tuple[int, ...]) -> GpuInfo:
    if info.mig_enabled or not peers:
        return info
    return GpuInfo(**{**{f: getattr(info, f) for f in GpuInfo.__slots__}, "nvlink_peers": peers})


def _profile_from(name: str, attributes: Any) -> str:
    """The MIG profile of a MIG device: from its name ("... MIG 1g.10gb"), else from its slice count and
    memory (names round the memory to whole GB)."""
    marker = " MIG "
    if marker in name:
        return name.split(marker, 1)[1].strip()
    if attributes is not None:
        return f"{int(attributes.gpuInstanceSliceCount)}g.{round(int(attributes.memorySizeMB) / 1000)}gb"
    return name


def _driver_version(backend: NvmlBackend) -> str | None:
    value = backend._optional(backend._nvml.nvmlSystemGetDriverVersion)
    return _text(value) if value is not None else None


def _cuda_version(backend: NvmlBackend) -> str | None:
    value = backend._optional(backend._nvml.nvmlSystemGetCudaDriverVersion_v2)
    return f"{int(value) // 1000}.{int(value) % 1000 // 10}" if value is not None else None


def _explain_init_error(nvml: Any, error: Exception) -> str:
    code = getattr(error, "value", None)
    reasons = {
        getattr(nvml, "NVML_ERROR_LIBRARY_NOT_FOUND", -1): "the NVML library (libnvidia-ml.so.1) is not installed: "
                                                           "no NVIDIA driver on this machine",
        getattr(nvml, "NVML_ERROR_DRIVER_NOT_LOADED", -1): "the NVIDIA kernel driver is not loaded",
        getattr(nvml, "NVML_ERROR_NO_PERMISSION", -1): "no permission to open the NVIDIA devices",
    }
    return f"NVML unavailable: {reasons.get(code, str(error) or type(error).__name__)}"


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

    def set_mig_mode(self, gpu: int, enabled: bool) -> None:
        """nvmlDeviceSetMigMode."""
        nvml = self._nvml
        nvml.nvmlDeviceSetMigMode(self._device(gpu), nvml.NVML_DEVICE_MIG_ENABLE if enabled
                                  else nvml.NVML_DEVICE_MIG_DISABLE)

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
