"""What the GPU layer reports: a node's GPU inventory (discovery) and its readings (sampling).

Both the NVML backend (`gpu/nvml.py`) and the scripted fake (`gpu/fake.py`) implement `GpuBackend`; the
rest of gpupool only sees these types. Memory in the inventory is in MiB (like the scheduler's resource
model); readings keep NVML's bytes so that metrics stay exact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class MigDevice:
    """One MIG device (a GPU instance with a compute instance) as NVML reports it."""

    uuid: str
    profile: str
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None
    memory_mib: int = 0
    sm_count: int | None = None


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """One physical GPU of a node, as discovered.

    `nvlink_peers` holds the indices of the GPUs this one reaches over NVLink (directly or through an
    NVSwitch); `mig_enabled` is the current MIG mode and `mig_pending` the mode after the next GPU reset.
    `error` is set when the basic queries failed (the card is then reported but never scheduled).
    """

    index: int
    uuid: str
    name: str
    memory_mib: int
    sm_count: int | None = None
    compute_capability: tuple[int, int] | None = None
    mig_enabled: bool = False
    mig_pending: bool = False
    mig_devices: tuple[MigDevice, ...] = ()
    pci_bus_id: str = ""
    nvlink_peers: tuple[int, ...] = ()
    nvlink_active_links: int = 0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class GpuInventory:
    """Every GPU of a node plus driver facts. `unavailable` says why a node has no GPUs (no NVML, no
    driver, no device); it is None when discovery worked, even if it found no GPU."""

    gpus: tuple[GpuInfo, ...] = ()
    driver_version: str | None = None
    cuda_version: str | None = None
    unavailable: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form (what the store keeps per node)."""
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> GpuInventory:
        """The inverse of to_dict."""
        gpus = []
        for g in data.get("gpus", ()):
            cc = g.get("compute_capability")
            gpus.append(GpuInfo(**{
                **g,
                "compute_capability": tuple(cc) if cc else None,
                "mig_devices": tuple(MigDevice(**m) for m in g.get("mig_devices", ())),
                "nvlink_peers": tuple(g.get("nvlink_peers", ())),
            }))
        return GpuInventory(tuple(gpus), data.get("driver_version"), data.get("cuda_version"),
                            data.get("unavailable"))


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One sample of one GPU. None means NVML could not report that value on this card."""

    index: int
    uuid: str
    utilization_pct: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    power_w: float | None = None
    temperature_c: float | None = None
    ecc_uncorrected: int | None = None


@dataclass(frozen=True, slots=True)
class ProcessReading:
    """GPU memory held by one process on one GPU (`mig_uuid` set when it runs in a MIG device).
    `memory_bytes` is None when the driver does not say (e.g. without privileges). `kind` is "compute" (from
    NVML's compute process list; on an MPS card that is the MPS server) or "mps_client" (from the MPS list).
    `pid` is as NVML reports it: in the caller's PID namespace on drivers that translate, else the host's."""

    gpu_index: int
    pid: int
    memory_bytes: int | None
    mig_uuid: str | None = None
    kind: str = "compute"


@dataclass(frozen=True, slots=True)
class GpuErrorEvent:
    """A hardware error seen on a GPU: `kind` is "xid" (code = the XID number) or "ecc" (code = the
    number of new uncorrected errors)."""

    gpu_index: int
    kind: str
    code: int
    detail: str = ""


@dataclass(frozen=True, slots=True)
class NodeSample:
    """Everything one sampling pass saw on a node at `time` (seconds, from the caller's clock)."""

    time: float
    gpus: tuple[GpuReading, ...] = ()
    processes: tuple[ProcessReading, ...] = ()
    errors: tuple[GpuErrorEvent, ...] = field(default=())
    # (pid, process group, session) of each process, resolved where the sample was taken (a remote node's
    # agent); empty: the monitor resolves the pids on its own machine
    process_groups: tuple[tuple[int, int | None, int | None], ...] = field(default=())


class GpuBackend(Protocol):
    """Discovery and sampling of one node's GPUs.

    - `discover()` returns the inventory; never raises because of a missing driver or library (the
      inventory is then empty with `unavailable` set). It may be called again to pick up MIG changes.
    - `sample(now)` returns current readings stamped with `now`; cheap enough to call every few seconds;
      error events are returned once (drained). Empty when there are no GPUs.
    - `close()` releases the library; idempotent.
    """

    name: str

    def discover(self) -> GpuInventory: ...

    def sample(self, now: float) -> NodeSample: ...

    def close(self) -> None: ...
