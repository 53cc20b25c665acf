"""What the sampler makes of each sample: per-replica GPU memory, over-use, idle allocations, GPU health.

`GpuMonitor.observe` takes one `NodeSample`, the GPU allocations of the replicas running on the node and
the process-group / session ids those replicas own (the local executor starts each replica in its own
session), and returns a `MonitorReport`. Time comes from the sample; the outside calls are the injected
`resolve` (pid -> process group and session), which by default asks the operating system, and the
optional `view` of our PID namespace (`gpu/attribution.py`): with it, pids NVML reports from another
namespace are detected and processes are matched to replicas by card and marker instead.

MPS clients (NVML's MPS process list) are attributed like any process; the MPS server (in the plain
compute list of a card with MPS clients, owned by no replica) is reported apart, not as foreign GPU use.

XIDs that are caused by applications rather than hardware (13 graphics engine exception, 31 MMU fault,
43 GPU stopped processing, 45 preemptive cleanup, 68 video processor exception, 109 context switch timeout;
NVIDIA's "XID Errors" catalog, the same set the NVIDIA Kubernetes device plugin skips) are reported but do
not mark a GPU unhealthy; every other XID, and any uncorrectable ECC error, does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from gpupool.domain.nodes import Gpu
from gpupool.domain.placement import GpuAssignment
from gpupool.domain.resources import model_matches, normalise_model
from gpupool.gpu.attribution import ProcessView, ReplicaKey, owners_by_marker, pids_untranslated
from gpupool.gpu.timeseries import SeriesStore
from gpupool.gpu.types import MIB, GpuErrorEvent, GpuReading, NodeSample, ProcessReading

__all__ = [  # ReplicaKey lives in gpu/attribution.py and is part of this module's interface too
    "APPLICATION_XIDS", "GpuAllocation", "GpuMonitor", "HealthEvent", "IdleAllocation", "MonitorPolicy",
    "MonitorReport", "OveruseEvent", "ReplicaGpuUsage", "ReplicaKey", "Resolver", "allocations_for",
    "process_groups",
]
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})
Resolver = Callable[[int], tuple[int | None, int | None]]


def process_groups(pid: int) -> tuple[int | None, int | None]:
    """(process group id, session id) of `pid`, or (None, None) when it is gone or not visible here."""
    try:
        return os.getpgid(pid), os.getsid(pid)
    except (ProcessLookupError, PermissionError):
        return None, None


@dataclass(frozen=True, slots=True)
class GpuAllocation:
    """What one replica was given on one card: compute milli and memory (MiB) it may use; `model` is the
    card's model (it selects the over-use tolerance)."""

    replica: ReplicaKey
    gpu_index: int
    milli: int
    memory_mib: int
    model: str = ""


def allocations_for(replica: ReplicaKey, assignments: Sequence[GpuAssignment],
                    gpus: Sequence[Gpu]) -> list[GpuAllocation]:
    """GpuAllocations of a replica from its scheduler assignments (a whole card allows all its memory)."""
    by_index = {g.index: g for g in gpus}
    result = []
    for a in assignments:
        card = by_index.get(a.index)
        memory = a.memory_mib or (card.memory_mib if card else 0)
        result.append(GpuAllocation(replica, a.index, a.milli, memory, card.model if card else ""))
    return result


@dataclass(frozen=True, slots=True)
class MonitorPolicy:
    """Thresholds. Over-use: memory above the allocation plus the tolerance of the card's model for
    `overuse_grace_s`; `overuse_kill` asks the caller to stop the replica. Idle: utilisation at most
    `idle_max_pct` for `idle_after_s`.

    The tolerance exists because NVML's per-process memory counts everything a process holds, the CUDA
    context and libraries' workspaces included, while a request (and the PyTorch cap of shared mode, which
    bounds only the caching allocator) does not: a replica exactly at its cap shows its request plus its
    context. `overuse_tolerance_by_model` maps a model or family name ("H100", "A100-SXM4-80GB") to MiB;
    other models get `overuse_tolerance_mib`. Default 1024 MiB: the CUDA context measured on an H200 (driver
    580.159, CUDA 13.0, torch 2.11) was 610 MiB; `benchmarks/gpu/check_gpu.py` measures it per model."""

    overuse_tolerance_mib: int = 1024
    overuse_grace_s: float = 10.0
    overuse_kill: bool = False
    idle_max_pct: float = 5.0
    idle_after_s: float = 1800.0
    ignored_xids: frozenset[int] = APPLICATION_XIDS
    overuse_tolerance_by_model: Mapping[str, int] = field(default_factory=dict)

    def tolerance_for(self, model: str) -> int:
        """The tolerance (MiB) of a card model: the entry of its exact name, else of the longest family name
        that matches it, else `overuse_tolerance_mib`."""
        if not model:
            return self.overuse_tolerance_mib
        name = normalise_model(model)
        matching = [(len(normalise_model(k)), v) for k, v in self.overuse_tolerance_by_model.items()
                    if normalise_model(k) == name or model_matches(k, name)]
        return max(matching)[1] if matching else self.overuse_tolerance_mib


@dataclass(frozen=True, slots=True)
class ReplicaGpuUsage:
    """GPU memory one replica's processes hold on one card, and its allowance there."""

    replica: ReplicaKey
    gpu_index: int
    memory_bytes: int
    allowed_mib: int
    pids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class OveruseEvent:
    """A replica holds more GPU memory than it asked for; `kill` when policy says to stop it."""

    time: float
    replica: ReplicaKey
    gpu_index: int
    used_mib: int
    allowed_mib: int
    since: float
    kill: bool

    @property
    def message(self) -> str:
        """Human text for the workload's events."""
        action = "; stopping it (policy)" if self.kill else ""
        return (f"replica {self.replica.replica} uses {self.used_mib} MiB on GPU {self.gpu_index}, more than the "
                f"{self.allowed_mib} MiB it asked for{action}")


@dataclass(frozen=True, slots=True)
class IdleAllocation:
    """A GPU allocated to a replica but idle since `idle_since` (the "wasted GPU" report)."""

    replica: ReplicaKey
    gpu_index: int
    milli: int
    idle_since: float
    idle_for_s: float

    @property
    def message(self) -> str:
        """Human text."""
        return (f"workload {self.replica.workload_id} (replica {self.replica.replica}) holds GPU {self.gpu_index} "
                f"({self.milli / 1000:g} GPU) but it has been idle for {_duration(self.idle_for_s)}")


def _duration(seconds: float) -> str:
    """'45 s', '15 min', '2.5 h'."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True, slots=True)
class HealthEvent:
    """A GPU became unhealthy (`reason`), or an error was seen that does not change health (`marks` False)."""

    time: float
    gpu_index: int
    reason: str
    marks_unhealthy: bool


@dataclass(frozen=True, slots=True)
class MonitorReport:
    """The outcome of one observe()."""

    time: float
    node: str
    gpus: tuple[GpuReading, ...]
    usage: tuple[ReplicaGpuUsage, ...]
    unowned: tuple[ProcessReading, ...]
    overuse: tuple[OveruseEvent, ...] = ()
    newly_idle: tuple[IdleAllocation, ...] = ()
    health: tuple[HealthEvent, ...] = ()
    unhealthy: Mapping[int, str] = field(default_factory=dict)
    mps_servers: tuple[ProcessReading, ...] = ()
    attribution: str = "pid"
    attribution_note: str = ""

    def workload_memory_bytes(self) -> dict[ReplicaKey, int]:
        """GPU memory per replica, over all its cards."""
        total: dict[ReplicaKey, int] = {}
        for u in self.usage:
            total[u.replica] = total.get(u.replica, 0) + u.memory_bytes
        return total


class GpuMonitor:
    """Keeps the state across samples of one node (over-use and idle timers, unhealthy GPUs, series)."""

    def __init__(self, node: str, policy: MonitorPolicy | None = None, series: SeriesStore | None = None,
                 resolve: Resolver = process_groups, view: ProcessView | None = None) -> None:
        self.node = node
        self.policy = policy or MonitorPolicy()
        self.series = series if series is not None else SeriesStore()
        self.resolve = resolve
        self.view = view
        self._over_since: dict[tuple[ReplicaKey, int], float] = {}
        self._over_reported: set[tuple[ReplicaKey, int]] = set()
        self._idle_since: dict[tuple[ReplicaKey, int], float] = {}
        self._idle_reported: set[tuple[ReplicaKey, int]] = set()
        self._unhealthy: dict[int, str] = {}
        self._ecc_seen: dict[int, int] = {}
        self._allocations: dict[tuple[ReplicaKey, int], GpuAllocation] = {}

    @property
    def unhealthy(self) -> dict[int, str]:
        """GPU index -> why it is unhealthy (sticky until clear_unhealthy)."""
        return dict(self._unhealthy)

    def clear_unhealthy(self, gpu_index: int) -> None:
        """An admin declares the GPU fixed (e.g. after a reset); errors seen later mark it again."""
        self._unhealthy.pop(gpu_index, None)

    def observe(self, sample: NodeSample, allocations: Sequence[GpuAllocation],
                owners: Mapping[int, ReplicaKey]) -> MonitorReport:
        """Digest one sample. `owners` maps a process-group id, session id or pid to the replica owning it."""
        now = sample.time
        self._allocations = {(a.replica, a.gpu_index): a for a in allocations}
        if sample.process_groups:  # resolved on the (remote) node itself: its pids mean nothing here
            groups = {pid: (group, session) for pid, group, session in sample.process_groups}
            by_card, note = None, ""
            usage, unowned = self._attribute(sample.processes, owners, None, lambda pid: groups.get(pid, (None, None)))
        else:
            by_card, note = self._card_owners(sample.processes)
            usage, unowned = self._attribute(sample.processes, owners, by_card, self.resolve)
        mps_cards = {p.gpu_index for p in sample.processes if p.kind == "mps_client"}
        servers = [p for p in unowned if p.kind == "compute" and p.gpu_index in mps_cards]
        unowned = [p for p in unowned if p not in servers]
        self._record_series(sample, usage)
        overuse = self._check_overuse(now, usage)
        idle = self._check_idle(now, sample.gpus)
        health = self._check_health(now, sample.gpus, sample.errors)
        return MonitorReport(now, self.node, sample.gpus, tuple(usage), tuple(unowned), tuple(overuse),
                             tuple(idle), tuple(health), dict(self._unhealthy), tuple(servers),
                             "pid" if by_card is None else "marker", note)

    def wasted(self, now: float) -> list[IdleAllocation]:
        """Every allocation idle longer than the policy allows, longest first."""
        found = []
        for key, since in self._idle_since.items():
            allocation = self._allocations.get(key)
            if allocation is not None and now - since >= self.policy.idle_after_s:
                found.append(IdleAllocation(key[0], key[1], allocation.milli, since, now - since))
        return sorted(found, key=lambda i: (-i.idle_for_s, i.replica, i.gpu_index))

    # ------------------------------------------------------------------------------------- steps
    @staticmethod
    def _owner(pid: int, owners: Mapping[int, ReplicaKey], resolve: Resolver) -> ReplicaKey | None:
        if pid in owners:
            return owners[pid]
        for group in resolve(pid):
            if group is not None and group in owners:
                return owners[group]
        return None

    def _card_owners(self, processes: Sequence[ProcessReading]) -> tuple[dict[int, ReplicaKey] | None, str]:
        """None when pids can be resolved here; else card -> its one replica (by marker) and why."""
        if self.view is None or not pids_untranslated(processes, self.view):
            return None, ""
        holders: dict[int, list[ReplicaKey]] = {}
        for replica, index in sorted(self._allocations):
            holders.setdefault(index, []).append(replica)
        found = owners_by_marker(holders, self.view.markers(), self.view.nested())
        return dict(found.owners), found.note

    def _attribute(self, processes: Sequence[ProcessReading], owners: Mapping[int, ReplicaKey],
                   by_card: Mapping[int, ReplicaKey] | None,
                   resolve: Resolver) -> tuple[list[ReplicaGpuUsage], list[ProcessReading]]:
        memory: dict[tuple[ReplicaKey, int], int] = {}
        pids: dict[tuple[ReplicaKey, int], list[int]] = {}
        unowned = []
        mps_cards = {p.gpu_index for p in processes if p.kind == "mps_client"}
        for proc in processes:
            if by_card is None:
                owner = self._owner(proc.pid, owners, resolve)
            elif proc.kind == "compute" and proc.gpu_index in mps_cards:
                owner = None  # by card, an MPS server would count as its clients' replica: it is reported apart
            else:
                owner = by_card.get(proc.gpu_index)
            if owner is None:
                unowned.append(proc)
                continue
            key = (owner, proc.gpu_index)
            memory[key] = memory.get(key, 0) + (proc.memory_bytes or 0)
            pids.setdefault(key, []).append(proc.pid)
        usage = []
        for key in sorted(memory):
            allocation = self._allocations.get(key)
            allowed = allocation.memory_mib if allocation else 0
            usage.append(ReplicaGpuUsage(key[0], key[1], memory[key], allowed, tuple(sorted(pids[key]))))
        return usage, unowned

    def _record_series(self, sample: NodeSample, usage: list[ReplicaGpuUsage]) -> None:
        t = sample.time
        for r in sample.gpus:
            base = ("gpu", self.node, str(r.index))
            for name, value in (("utilization_pct", r.utilization_pct), ("memory_used_bytes", r.memory_used_bytes),
                                ("power_w", r.power_w), ("temperature_c", r.temperature_c)):
                if value is not None:
                    self.series.add((*base, name), t, float(value))
        per_workload: dict[str, int] = {}
        for u in usage:
            per_workload[u.replica.workload_id] = per_workload.get(u.replica.workload_id, 0) + u.memory_bytes
        for workload_id, used in sorted(per_workload.items()):
            self.series.add(("workload", workload_id, self.node, "gpu_memory_bytes"), t, float(used))

    def _check_overuse(self, now: float, usage: list[ReplicaGpuUsage]) -> list[OveruseEvent]:
        events, over_now = [], set()
        for u in usage:
            key = (u.replica, u.gpu_index)
            used_mib = u.memory_bytes // MIB
            allocation = self._allocations.get(key)
            if allocation is None or used_mib <= u.allowed_mib + self.policy.tolerance_for(allocation.model):
                continue
            over_now.add(key)
            since = self._over_since.setdefault(key, now)
            if now - since >= self.policy.overuse_grace_s and key not in self._over_reported:
                self._over_reported.add(key)
                events.append(OveruseEvent(now, u.replica, u.gpu_index, used_mib, u.allowed_mib, since,
                                           self.policy.overuse_kill))
        for key in set(self._over_since) - over_now:  # the episode ended: a new one reports again
            del self._over_since[key]
            self._over_reported.discard(key)
        return events

    def _check_idle(self, now: float, readings: Sequence[GpuReading]) -> list[IdleAllocation]:
        utilization = {r.index: r.utilization_pct for r in readings}
        events = []
        for key, allocation in sorted(self._allocations.items()):
            pct = utilization.get(allocation.gpu_index)
            if pct is None or pct > self.policy.idle_max_pct:
                self._idle_since.pop(key, None)
                self._idle_reported.discard(key)
                continue
            since = self._idle_since.setdefault(key, now)
            if now - since >= self.policy.idle_after_s and key not in self._idle_reported:
                self._idle_reported.add(key)
                events.append(IdleAllocation(key[0], key[1], allocation.milli, since, now - since))
        for key in set(self._idle_since) - set(self._allocations):
            del self._idle_since[key]
            self._idle_reported.discard(key)
        return events

    def _check_health(self, now: float, readings: Sequence[GpuReading],
                      errors: Sequence[GpuErrorEvent]) -> list[HealthEvent]:
        events = []
        for error in errors:
            if error.kind == "xid" and error.code in self.policy.ignored_xids:
                events.append(HealthEvent(now, error.gpu_index, f"XID {error.code} (caused by an application)", False))
            else:
                events += self._mark(now, error.gpu_index, error.detail or f"{error.kind} {error.code}")
        for r in readings:
            if r.ecc_uncorrected is None:
                continue
            before = self._ecc_seen.get(r.index, 0)
            self._ecc_seen[r.index] = r.ecc_uncorrected
            if r.ecc_uncorrected > before:
                events += self._mark(now, r.index, f"{r.ecc_uncorrected} uncorrectable ECC error(s) since boot")
        return events

    def _mark(self, now: float, gpu_index: int, reason: str) -> list[HealthEvent]:
        if gpu_index in self._unhealthy:
            return []
        self._unhealthy[gpu_index] = reason
        return [HealthEvent(now, gpu_index, reason, True)]
