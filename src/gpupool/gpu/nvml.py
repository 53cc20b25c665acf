"""GPU discovery and sampling through NVML (the nvidia-ml-py package, imported as `pynvml`).

Every NVML call used here is documented in the NVML API reference (https://docs.nvidia.com/deploy/nvml-api/):
- Initialization and cleanup: nvmlInit, nvmlShutdown.
- System queries: nvmlSystemGetDriverVersion, nvmlSystemGetCudaDriverVersion_v2 (e.g. 12040 = CUDA 12.4).
- Device queries: nvmlDeviceGetCount, nvmlDeviceGetHandleByIndex, nvmlDeviceGetIndex, nvmlDeviceGetUUID,
  nvmlDeviceGetName, nvmlDeviceGetMemoryInfo (bytes), nvmlDeviceGetCudaComputeCapability, nvmlDeviceGetPciInfo
  (busId), nvmlDeviceGetUtilizationRates (percent over the last sample period), nvmlDeviceGetPowerUsage
  (milliwatts), nvmlDeviceGetTemperature (NVML_TEMPERATURE_GPU, degrees C), nvmlDeviceGetTotalEccErrors
  (NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC), nvmlDeviceGetComputeRunningProcesses and
  nvmlDeviceGetMPSComputeRunningProcesses (pid and usedGpuMemory in bytes; pynvml's unversioned names call
  the _v3 functions and raise NVMLLibraryMismatchError, a plain Exception, on drivers without them: the _v2
  functions are used then), nvmlDeviceGetMemoryInfo_v2 (`used` without the memory the driver reserves; v1,
  whose `used` includes it, where v2 is missing), nvmlDeviceGetP2PStatus (NVML_P2P_CAPS_INDEX_NVLINK: NVLink
  peers, direct or through NVSwitch).
- NvLink methods: nvmlDeviceGetNvLinkState (active links, for information).
- Multi Instance GPU management: nvmlDeviceGetMigMode, nvmlDeviceGetMaxMigDeviceCount,
  nvmlDeviceGetMigDeviceHandleByIndex, nvmlDeviceGetGpuInstanceId, nvmlDeviceGetComputeInstanceId,
  nvmlDeviceGetAttributes (multiprocessorCount, memorySizeMB; it answers only for MIG device handles, so
  whole cards take their SM count from the GPU catalog, `gpu/models.py`), and for applying layouts
  (`PynvmlMig`, `gpu/nvml_mig.py`):
  nvmlDeviceSetMigMode, nvmlDeviceGetGpuInstanceProfileInfo, nvmlDeviceGetGpuInstances,
  nvmlDeviceCreateGpuInstanceWithPlacement, nvmlGpuInstanceGetInfo, nvmlGpuInstanceDestroy,
  nvmlGpuInstanceGetComputeInstanceProfileInfo, nvmlGpuInstanceGetComputeInstances,
  nvmlGpuInstanceCreateComputeInstance, nvmlComputeInstanceDestroy.
- Events: nvmlEventSetCreate, nvmlDeviceRegisterEvents (nvmlEventTypeXidCriticalError,
  nvmlEventTypeDoubleBitEccError), nvmlEventSetWait_v2 (timeout 0: drain without blocking).

Without NVML (library not installed, no driver, no GPU) the node simply has no GPUs: discovery returns an
empty inventory whose `unavailable` says why, logged once; nothing raises. A failed `nvmlInit` (driver not
loaded yet, devices not readable) is tried again after INIT_RETRY_FIRST_S, doubling up to INIT_RETRY_MAX_S;
a missing nvidia-ml-py package is not (installing it needs a restart anyway).

The aggregate memory of a card in MIG mode needs privileges (NVML reference, nvmlDeviceGetMemoryInfo: "In
MIG mode, if device handle is provided, the API returns aggregate information, only if the caller has
appropriate privileges"): without them the card is described from its MIG devices, never marked broken.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from gpupool.gpu.mig import catalog_for
from gpupool.gpu.models import sm_count_for
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
# After a failed nvmlInit: first retry after 10 s (a driver that is still loading at boot), doubling up to
# 10 minutes (a node without a working driver costs one attempt per 10 minutes, not one per sample).
INIT_RETRY_FIRST_S = 10.0
INIT_RETRY_MAX_S = 600.0


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

    def __init__(self, load: Callable[[], Any] = load_pynvml, clock: Callable[[], float] = time.monotonic) -> None:
        self._load = load
        self._clock = clock
        self._nvml: Any = None
        self._unavailable: str | None = None
        self._permanent = False
        self._retry_at = 0.0
        self._retry_after = INIT_RETRY_FIRST_S
        self._handles: list[Any] = []
        self._mig_handles: dict[int, list[tuple[str, Any]]] = {}
        self._events: Any = None
        self._registered: set[int] = set()
        self._discovered = False
        self._memory_v2 = True
        self._process_calls: dict[str, str] = {}

    # ------------------------------------------------------------------------------------ lifecycle
    def _ready(self) -> Any:
        if self._nvml is not None:
            return self._nvml
        if self._unavailable is not None and (self._permanent or self._clock() < self._retry_at):
            return None
        try:
            nvml = self._load()
        except ImportError as error:
            self._permanent = True
            return self._give_up(f"nvidia-ml-py is not installed ({error})")
        try:
            nvml.nvmlInit()
        except Exception as error:  # NVMLError, or anything a broken installation throws
            self._retry_at = self._clock() + self._retry_after
            self._retry_after = min(self._retry_after * 2, INIT_RETRY_MAX_S)
            return self._give_up(_explain_init_error(nvml, error))
        if self._unavailable is not None:
            log.info("NVML works again on this node (it was unavailable: %s)", self._unavailable)
        self._nvml, self._unavailable, self._retry_after = nvml, None, INIT_RETRY_FIRST_S
        return nvml

    def _give_up(self, reason: str) -> None:
        if reason != self._unavailable:
            log.info("no GPUs on this node: %s", reason)
        self._unavailable = reason

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

    def _optional(self, fn: Callable[..., Any], *args: Any, nvml: Any = None, **kwargs: Any) -> Any:
        """fn(*args), or None when NVML reports an error (not supported, no permission, GPU lost) or pynvml
        finds the function missing from the driver's library (NVMLLibraryMismatchError)."""
        try:
            return fn(*args, **kwargs)
        except _errors(nvml or self._nvml):
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
        except nvml.NVMLError as error:
            log.warning("GPU %d does not answer NVML (%s); it is reported unhealthy", index, error)
            return GpuInfo(index, f"unknown-{index}", "unknown", 0, error=str(error))
        mig = self._optional(nvml.nvmlDeviceGetMigMode, handle)
        mig_enabled = bool(mig and mig[0] == nvml.NVML_DEVICE_MIG_ENABLE)
        devices = self._mig_devices(index, handle) if mig_enabled else ()
        try:
            memory_mib = int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // MIB
        except nvml.NVMLError as error:
            if not mig_enabled:
                log.warning("GPU %d does not answer NVML (%s); it is reported unhealthy", index, error)
                return GpuInfo(index, uuid, name, 0, error=str(error))
            memory_mib = _mig_card_memory_mib(name, devices)  # a MIG parent without privileges
        attributes = self._optional(nvml.nvmlDeviceGetAttributes, handle)  # MIG devices only, so far
        cc = self._optional(nvml.nvmlDeviceGetCudaComputeCapability, handle)
        pci = self._optional(nvml.nvmlDeviceGetPciInfo, handle)
        return GpuInfo(
            index=index, uuid=uuid, name=name, memory_mib=memory_mib,
            sm_count=int(attributes.multiprocessorCount) if attributes else sm_count_for(name),
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
        memory = self._memory(handle)
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

    def _memory(self, handle: Any) -> Any:
        """nvmlDeviceGetMemoryInfo_v2 (used memory without the driver's reservation); v1 where the driver or
        pynvml lack v2 (then never tried again)."""
        nvml = self._nvml
        version = getattr(nvml, "nvmlMemory_v2", None)
        if self._memory_v2 and version is not None:
            try:
                return nvml.nvmlDeviceGetMemoryInfo(handle, version=version)
            except _errors(nvml) as error:
                if not _missing_function(nvml, error):
                    return None  # e.g. a MIG parent without privileges: v1 would fail alike
                self._memory_v2 = False
                log.info("NVML has no nvmlDeviceGetMemoryInfo_v2 here; used memory includes the driver's reserve")
        return self._optional(nvml.nvmlDeviceGetMemoryInfo, handle)

    def _process_list(self, name: str, source: Any) -> list[Any]:
        """The processes of one NVML process call (`name` without version), through pynvml's unversioned
        function (the _v3 call), falling back to the _v2 call on drivers without _v3 (remembered)."""
        nvml = self._nvml
        chosen = self._process_calls.get(name)
        for candidate in ([chosen] if chosen else [name, f"{name}_v2"]):
            fn = getattr(nvml, candidate, None)
            if fn is None:
                continue
            try:
                found = list(fn(source) or ())
            except _errors(nvml) as error:
                if chosen is None and _missing_function(nvml, error):
                    continue  # old driver: try the older version
                return []
            self._process_calls[name] = candidate
            return found
        return []

    def _processes(self, index: int, handle: Any) -> list[ProcessReading]:
        """Every process with a CUDA context on the card (per MIG device in MIG mode): the plain compute list
        (on an MPS card it holds the MPS server) and the MPS list (the MPS clients). A pid in both counts
        once, as an MPS client."""
        mig = self._mig_handles.get(index)
        sources = mig if mig else [(None, handle)]
        found: list[ProcessReading] = []
        for mig_uuid, source in sources:
            seen: dict[int, ProcessReading] = {}
            for call, kind in (("nvmlDeviceGetComputeRunningProcesses", "compute"),
                               ("nvmlDeviceGetMPSComputeRunningProcesses", "mps_client")):
                for proc in self._process_list(call, source):
                    used = proc.usedGpuMemory
                    seen[int(proc.pid)] = ProcessReading(index, int(proc.pid), int(used) if used is not None else None,
                                                         mig_uuid, kind)
            found += [seen[pid] for pid in sorted(seen)]
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


def _errors(nvml: Any) -> tuple[type[BaseException], ...]:
    """The exceptions a pynvml call raises for a refusal of the driver: NVMLError and, for the unversioned
    names of newer functions on older drivers, NVMLLibraryMismatchError (which is not an NVMLError)."""
    mismatch = getattr(nvml, "NVMLLibraryMismatchError", None)
    return (nvml.NVMLError, mismatch) if isinstance(mismatch, type) else (nvml.NVMLError,)


def _missing_function(nvml: Any, error: BaseException) -> bool:
    """True when `error` says the driver's NVML library lacks the function (an older driver)."""
    mismatch = getattr(nvml, "NVMLLibraryMismatchError", None)
    if isinstance(mismatch, type) and isinstance(error, mismatch):
        return True
    return getattr(error, "value", None) == getattr(nvml, "NVML_ERROR_FUNCTION_NOT_FOUND", 13)


def _mig_card_memory_mib(name: str, devices: tuple[MigDevice, ...]) -> int:
    """The memory of a MIG-enabled card NVML will not report to us: the nominal size of the model's whole-card
    profile ("7g.80gb" -> 80 GiB, as NVIDIA names sizes) where the catalog knows the model, else what its MIG
    devices hold."""
    model = catalog_for(name)
    if model is not None:
        full = max(model.profiles, key=lambda p: p.memory_slices)
        return int(full.name.split(".")[1].removesuffix("gb")) * 1024
    return sum(d.memory_mib for d in devices)


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
