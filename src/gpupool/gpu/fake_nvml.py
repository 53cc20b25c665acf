"""A scripted stand-in for the NVML library: the subset of pynvml's functions gpupool calls, answering from
a `FakeGpuState` (cards, MIG instances, processes, traces, error events) at the state's clock.

`FakeNvml` has pynvml's names and error semantics (it raises pynvml's own `NVMLError` classes), so the
real `NvmlBackend` runs unchanged on top of it; `FakeMig` (`gpu/fake_mig.py`) implements `gpu.mig.MigNvml`
on the same state and records the NVML calls it receives. Build states with `gpu.fake.load_description`.

Driver behaviours the state can script, as real drivers show them:
- MPS: a process with `mps_client` is listed by nvmlDeviceGetMPSComputeRunningProcesses only; every other
  process (an MPS server among them) by nvmlDeviceGetComputeRunningProcesses.
- `old_driver`: the _v3 process calls and nvmlDeviceGetMemoryInfo_v2 are missing; pynvml's unversioned
  process calls then raise NVMLLibraryMismatchError, exactly as pynvml does.
- `host_pids`: the driver does not translate pids into the caller's PID namespace: a process is reported
  with its `host_pid`, else with its pid + HOST_PID_OFFSET (beyond any Linux pid, so never visible here).
- `privileged` False: the aggregate memory of a card in MIG mode is refused (NVML_ERROR_NO_PERMISSION).
- per card `reserved_bytes`: memory the driver reserves; memory info v1 counts it as used, v2 does not.
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml

from gpupool.gpu.mig import MigModel, MigProfile

_NS = uuidlib.UUID("6f1c2d1e-8a59-4f6e-9b59-6d2a4f3c0a11")
HOST_PID_OFFSET = 10_000_000  # above PID_MAX_LIMIT (4,194,304 on 64-bit Linux): no pid of this namespace


@dataclass(frozen=True, slots=True)
class Trace:
    """A value over time: a step function through (time, value) points, the first value before them."""

    points: tuple[tuple[float, float], ...]

    def at(self, t: float) -> float:
        """The value at time `t`."""
        value = self.points[0][1]
        for when, v in self.points:
            if when > t:
                break
            value = v
        return value


def constant(value: float) -> Trace:
    """A trace that never changes."""
    return Trace(((0.0, value),))


@dataclass(slots=True)
class FakeProcess:
    """A process using `memory` bytes (a trace) on GPU `gpu` (MIG device position `mig` when set) between
    `start` and `end` (seconds of fake time); `mps_client` when it reaches the GPU through an MPS server;
    `host_pid` is what an untranslating driver reports for it (see the module docstring)."""

    pid: int
    gpu: int
    memory: Trace
    mig: int | None = None
    start: float = 0.0
    end: float | None = None
    mps_client: bool = False
    host_pid: int | None = None

    def alive(self, t: float) -> bool:
        """True while the process exists at time `t`."""
        return self.start <= t and (self.end is None or t < self.end)


@dataclass(slots=True)
class FakeGpuInstance:
    """A MIG GPU instance with its compute instances (ids) and the UUID of its MIG device."""

    id: int
    profile: MigProfile
    start: int
    compute: list[int] = field(default_factory=list)
    uuid: str = ""


@dataclass(frozen=True, slots=True)
class FakeEvent:
    """A hardware error at fake time `at`: kind "xid" (code = XID) or "ecc" (code = new uncorrected errors)."""

    at: float
    kind: str
    code: int


@dataclass(slots=True)
class FakeCard:
    """One scripted GPU."""

    index: int
    uuid: str
    name: str
    memory_bytes: int
    sm_count: int | None = None
    compute_capability: tuple[int, int] = (8, 0)
    nvlink_group: str | None = None
    mig_model: MigModel | None = None
    mig_enabled: bool = False
    mig_pending: bool = False
    mig_needs_reset: bool = False
    mig_activation: int = 0
    reserved_bytes: int = 0
    instances: list[FakeGpuInstance] = field(default_factory=list)
    utilization: Trace = field(default_factory=lambda: constant(0))
    power_w: Trace = field(default_factory=lambda: constant(60))
    temperature_c: Trace = field(default_factory=lambda: constant(35))
    events: tuple[FakeEvent, ...] = ()
    lost: bool = False
    serial: int = 0

    @property
    def pci_bus_id(self) -> str:
        """A bus id in NVML's format."""
        return f"00000000:{0x10 + self.index:02X}:00.0"

    def new_mig_uuid(self, gi: int) -> str:
        """A fresh MIG device UUID (a new one each time an instance is created, as on real cards)."""
        self.serial += 1
        return f"MIG-{uuidlib.uuid5(_NS, f'{self.uuid}/{gi}/{self.serial}')}"


@dataclass(slots=True)
class FakeGpuState:
    """Everything the fake NVML answers from. `clock` is the current fake time (set by FakeBackend);
    with `repeat` the traces and events loop with that period."""

    cards: list[FakeCard]
    processes: list[FakeProcess] = field(default_factory=list)
    driver_version: str = "550.54.15"
    cuda_version: int = 12040
    clock: float = 0.0
    repeat: float | None = None
    delivered: set[tuple[int, int, int]] = field(default_factory=set)
    old_driver: bool = False
    host_pids: bool = False
    privileged: bool = True

    @property
    def t(self) -> float:
        """The time traces are read at (the clock, folded into the repeat period)."""
        return self.clock % self.repeat if self.repeat else self.clock

    @property
    def cycle(self) -> int:
        """How many repeat periods have passed (events fire once per period)."""
        return int(self.clock // self.repeat) if self.repeat else 0


def fake_uuid(seed: str, index: int) -> str:
    """A stable GPU UUID in NVML's format for card `index` of fake node `seed`."""
    return f"GPU-{uuidlib.uuid5(_NS, f'{seed}/{index}')}"


def _error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


@dataclass(frozen=True, slots=True)
class _MigHandle:
    card: FakeCard
    instance: FakeGpuInstance


@dataclass(frozen=True, slots=True)
class _GiHandle:
    gpu: int
    gi_id: int


@dataclass(frozen=True, slots=True)
class _CiHandle:
    gi: _GiHandle
    ci_id: int


class FakeNvml:
    """pynvml's functions and constants, answered from a FakeGpuState (see the module docstring)."""

    NVMLError = pynvml.NVMLError
    NVML_DEVICE_MIG_ENABLE = pynvml.NVML_DEVICE_MIG_ENABLE
    NVML_DEVICE_MIG_DISABLE = pynvml.NVML_DEVICE_MIG_DISABLE
    NVML_P2P_CAPS_INDEX_NVLINK = pynvml.NVML_P2P_CAPS_INDEX_NVLINK
    NVML_P2P_STATUS_OK = pynvml.NVML_P2P_STATUS_OK
    NVML_P2P_STATUS_NOT_SUPPORTED = pynvml.NVML_P2P_STATUS_NOT_SUPPORTED
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
    NVML_VOLATILE_ECC = pynvml.NVML_VOLATILE_ECC
    NVML_NVLINK_MAX_LINKS = 18
    NVML_ERROR_LIBRARY_NOT_FOUND = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND
    NVML_ERROR_DRIVER_NOT_LOADED = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    NVML_ERROR_NO_PERMISSION = pynvml.NVML_ERROR_NO_PERMISSION
    NVML_ERROR_FUNCTION_NOT_FOUND = pynvml.NVML_ERROR_FUNCTION_NOT_FOUND
    NVMLLibraryMismatchError = pynvml.NVMLLibraryMismatchError
    nvmlMemory_v2 = pynvml.nvmlMemory_v2
    nvmlEventTypeXidCriticalError = pynvml.nvmlEventTypeXidCriticalError
    nvmlEventTypeDoubleBitEccError = pynvml.nvmlEventTypeDoubleBitEccError
    NVLINKS_PER_GROUP_MEMBER = 12

    def __init__(self, state: FakeGpuState) -> None:
        self.state = state
        self.initialised = 0
        self.registered: dict[int, int] = {}

    # --------------------------------------------------------------------------- init and system
    def nvmlInit(self) -> None:
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.initialised = max(0, self.initialised - 1)

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.state.driver_version

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        return self.state.cuda_version

    # ------------------------------------------------------------------------------------ devices
    def nvmlDeviceGetCount(self) -> int:
        return len(self.state.cards)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeCard:
        if not 0 <= index < len(self.state.cards):
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self.state.cards[index]

    def _card(self, handle: Any) -> FakeCard:
        card = handle.card if isinstance(handle, _MigHandle) else handle
        if card.lost:
            raise _error(pynvml.NVML_ERROR_GPU_IS_LOST)
        return card

    def nvmlDeviceGetIndex(self, handle: Any) -> int:
        return self._card(handle).index

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        card = self._card(handle)
        return handle.instance.uuid if isinstance(handle, _MigHandle) else card.uuid

    def nvmlDeviceGetName(self, handle: Any) -> str:
        card = self._card(handle)
        return f"{card.name} MIG {handle.instance.profile.name}" if isinstance(handle, _MigHandle) else card.name

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None) -> SimpleNamespace:
        card = self._card(handle)
        if version is not None and self.state.old_driver:
            raise _error(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)  # no nvmlDeviceGetMemoryInfo_v2
        if card.mig_enabled and not isinstance(handle, _MigHandle) and not self.state.privileged:
            raise _error(pynvml.NVML_ERROR_NO_PERMISSION)
        used = sum(int(p.memory.at(self.state.t)) for p in self._running(card.index, None))
        reserved = card.reserved_bytes
        used = min(used + (0 if version is not None else reserved), card.memory_bytes)
        if version is None:
            return SimpleNamespace(total=card.memory_bytes, used=used, free=card.memory_bytes - used)
        return SimpleNamespace(version=version, total=card.memory_bytes, reserved=reserved, used=used,
                               free=card.memory_bytes - used - reserved)

    def nvmlDeviceGetCudaComputeCapability(self, handle: Any) -> tuple[int, int]:
        return self._card(handle).compute_capability

    def nvmlDeviceGetPciInfo(self, handle: Any) -> SimpleNamespace:
        return SimpleNamespace(busId=self._card(handle).pci_bus_id)

    def nvmlDeviceGetAttributes(self, handle: Any) -> SimpleNamespace:
        card = self._card(handle)
        if not isinstance(handle, _MigHandle):
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)  # answered for MIG device handles only
        profile, model = handle.instance.profile, card.mig_model
        slices = model.compute_slices if model else 7
        return SimpleNamespace(
            multiprocessorCount=(card.sm_count or 0) * profile.compute_slices // slices,
            memorySizeMB=(card.memory_bytes >> 20) * profile.memory_slices // (model.memory_slices if model else 8),
            gpuInstanceSliceCount=profile.compute_slices,
        )

    # ---------------------------------------------------------------------------------------- MIG
    def nvmlDeviceGetMigMode(self, handle: Any) -> list[int]:
        card = self._card(handle)
        if card.mig_model is None:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return [int(card.mig_enabled), int(card.mig_pending)]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any) -> int:
        card = self._card(handle)
        return 7 if card.mig_model else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: int) -> _MigHandle:
        card = self._card(handle)
        devices = [gi for gi in card.instances if gi.compute]
        if not card.mig_enabled or index >= len(devices):
            raise _error(pynvml.NVML_ERROR_NOT_FOUND)
        return _MigHandle(card, devices[index])

    def nvmlDeviceGetGpuInstanceId(self, handle: _MigHandle) -> int:
        return handle.instance.id

    def nvmlDeviceGetComputeInstanceId(self, handle: _MigHandle) -> int:
        return handle.instance.compute[0]

    # ------------------------------------------------------------------------------------- NVLink
    def nvmlDeviceGetNvLinkState(self, handle: Any, link: int) -> int:
        card = self._card(handle)
        if card.nvlink_group is None or link >= self.NVLINKS_PER_GROUP_MEMBER:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED if card.nvlink_group is None
                         else pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return 1

    def nvmlDeviceGetP2PStatus(self, a: Any, b: Any, capability: int) -> int:
        first, second = self._card(a), self._card(b)
        linked = first.nvlink_group is not None and first.nvlink_group == second.nvlink_group
        usable = linked and not first.mig_enabled and not second.mig_enabled
        return int(self.NVML_P2P_STATUS_OK if usable else self.NVML_P2P_STATUS_NOT_SUPPORTED)

    # -------------------------------------------------------------------------------- readings
    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> SimpleNamespace:
        card = self._card(handle)
        if card.mig_enabled:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)  # as on real cards in MIG mode
        return SimpleNamespace(gpu=int(card.utilization.at(self.state.t)), memory=0)

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        return int(self._card(handle).power_w.at(self.state.t) * 1000)

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        return int(self._card(handle).temperature_c.at(self.state.t))

    def nvmlDeviceGetTotalEccErrors(self, handle: Any, error_type: int, counter: int) -> int:
        card = self._card(handle)
        return sum(e.code for e in card.events if e.kind == "ecc" and self._fired(e))

    def _fired(self, event: FakeEvent) -> bool:
        return event.at <= self.state.t or self.state.cycle > 0

    def _running(self, gpu: int, mig: int | None) -> list[FakeProcess]:
        t = self.state.t
        return [p for p in self.state.processes if p.gpu == gpu and p.alive(t) and (mig is None or p.mig == mig)]

    def _listed(self, handle: Any, mps: bool) -> list[SimpleNamespace]:
        card = self._card(handle)
        if isinstance(handle, _MigHandle):
            position = [gi for gi in card.instances if gi.compute].index(handle.instance)
            procs = self._running(card.index, position)
        else:
            procs = [] if card.mig_enabled else self._running(card.index, None)
        t = self.state.t
        return [SimpleNamespace(pid=self._reported_pid(p), usedGpuMemory=int(p.memory.at(t)), gpuInstanceId=0,
                                computeInstanceId=0) for p in procs if p.mps_client == mps]

    def _reported_pid(self, process: FakeProcess) -> int:
        if not self.state.host_pids:
            return process.pid
        return process.host_pid if process.host_pid is not None else process.pid + HOST_PID_OFFSET

    def _v3(self, name: str) -> None:
        if self.state.old_driver:
            raise pynvml.NVMLLibraryMismatchError(f"Unversioned function called and the pyNVML version does not "
                                                  f"match the NVML lib version ({name})")

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[SimpleNamespace]:
        self._v3("nvmlDeviceGetComputeRunningProcesses")
        return self._listed(handle, mps=False)

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: Any) -> list[SimpleNamespace]:
        return self._listed(handle, mps=False)

    def nvmlDeviceGetMPSComputeRunningProcesses(self, handle: Any) -> list[SimpleNamespace]:
        self._v3("nvmlDeviceGetMPSComputeRunningProcesses")
        return self._listed(handle, mps=True)

    def nvmlDeviceGetMPSComputeRunningProcesses_v2(self, handle: Any) -> list[SimpleNamespace]:
        return self._listed(handle, mps=True)

    # ------------------------------------------------------------------------------------ events
    def nvmlEventSetCreate(self) -> object:
        return self

    def nvmlEventSetFree(self, event_set: object) -> None:
        self.registered.clear()

    def nvmlDeviceRegisterEvents(self, handle: Any, types: int, event_set: object) -> None:
        self.registered[self._card(handle).index] = types

    def nvmlEventSetWait_v2(self, event_set: object, timeout_ms: int) -> SimpleNamespace:
        for card in self.state.cards:
            mask = self.registered.get(card.index, 0)
            for k, event in enumerate(card.events):
                xid = event.kind == "xid"
                kind = self.nvmlEventTypeXidCriticalError if xid else self.nvmlEventTypeDoubleBitEccError
                key = (card.index, k, self.state.cycle)
                if mask & kind and event.at <= self.state.t and key not in self.state.delivered:
                    self.state.delivered.add(key)
                    return SimpleNamespace(device=card, eventType=kind, eventData=event.code)
        raise _error(pynvml.NVML_ERROR_TIMEOUT)
