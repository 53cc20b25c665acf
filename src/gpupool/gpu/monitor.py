"""What the sampler makes of each sample: per-replica GPU memory, over-use, idle allocations, GPU health.

`GpuMonitor.observe` takes one `NodeSample`, the GPU allocations of the replicas running on the node and
the process-group / session ids those replicas own (the local executor starts each replica in its own
session), and returns a `MonitorReport`. Time comes from the sample; the only outside call is the injected
`resolve` (pid -> process group and session), which by default asks the operating system.

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
from gpupool.gpu.timeseries import SeriesStore
from gpupool.gpu.types import MIB, GpuErrorEvent, GpuReading, NodeSample, ProcessReading

APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})
Resolver = Callable[[int], tuple[int | None, int | None]]


def process_groups(pid: int) -> tuple[int | None, int | None]:
    """(process group id, session id) of `pid`, or (None, None) when it is gone or not visible here."""
    try:
        return os.getpgid(pid), os.getsid(pid)
    except (ProcessLookupError, PermissionError):
        return None, None


@dataclass(frozen=True, slots=True, order=True)
class ReplicaKey:
    """One replica of one workload (and its project, for metrics labels)."""

    workload_id: str
    replica: int = 0
    project: str = ""


@dataclass(frozen=True, slots=True)
class GpuAllocation:
    """What one replica was given on one card: compute milli and memory (MiB) it may use."""

    replica: ReplicaKey
    gpu_index: int
    milli: int
    memory_mib: int


def allocations_for(replica: ReplicaKey, assignments: Sequence[GpuAssignment],
                    gpus: Sequence[Gpu]) -> list[GpuAllocation]:
    """GpuAllocations of a replica from its scheduler assignments (a whole card allows all its memory)."""
    by_index = {g.index: g for g in gpus}
    result = []
    for a in assignments:
        card = by_index.get(a.index)
        memory = a.memory_mib or (card.memory_mib if card else 0)
        result.append(GpuAllocation(replica, a.index, a.milli, memory))
    return result


@dataclass(frozen=True, slots=True)
class MonitorPolicy:
    """Thresholds. Over-use: memory above the allocation plus `overuse_tolerance_mib` (CUDA contexts
    take a few hundred MiB no request counts) for `overuse_grace_s`; `overuse_kill` asks the caller to
    stop the replica. Idle: utilisation at most `idle_max_pct` for `idle_after_s`."""

    overuse_tolerance_mib: int = 512
    overuse_grace_s: float = 10.0
    overuse_kill: bool = False
    idle_max_pct: float = 5.0
    idle_after_s: float = 1800.0
    ignored_xids: frozenset[int] = APPLICATION_XIDS


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

    def workload_memory_bytes(self) -> dict[ReplicaKey, int]:
        """GPU memory per replica, over all its cards."""
        total: dict[ReplicaKey, int] = {}
        for u in self.usage:
            total[u.replica] = total.get(u.replica, 0) + u.memory_bytes
        return total


class GpuMonitor:
    """Keeps the state across samples of one node (over-use and idle timers, unhealthy GPUs, series)."""

    def __init__(self, node: str, policy: MonitorPolicy | None = None, series: SeriesStore | None = None,
                 resolve: Resolver = process_groups) -> None:
        self.node = node
        self.policy = policy or MonitorPolicy()
        self.series = series if series is not None else SeriesStore()
        self.resolve = resolve
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
        usage, unowned = self._attribute(sample.processes, owners)
        self._record_series(sample, usage)
        overuse = self._check_overuse(now, usage)
        idle = self._check_idle(now, sample.gpus)
        health = self._check_health(now, sample.gpus, sample.errors)
        return MonitorReport(now, self.node, sample.gpus, tuple(usage), tuple(unowned), tuple(overuse),
                             tuple(idle), tuple(health), dict(self._unhealthy))

    def wasted(self, now: float) -> list[IdleAllocation]:
        """Every allocation idle longer than the policy allows, longest first."""
        found = []
        for key, since in self._idle_since.items():
            allocation = self._allocations.get(key)
            if allocation is not None and now - since >= self.policy.idle_after_s:
                found.append(IdleAllocation(key[0], key[1], allocation.milli, since, now - since))
        return sorted(found, key=lambda i: (-i.idle_for_s, i.replica, i.gpu_index))

    # ------------------------------------------------------------------------------------- steps
    def _owner(self, pid: int, owners: Mapping[int, ReplicaKey]) -> ReplicaKey | None:
        if pid in owners:
            return owners[pid]
        for group in self.resolve(pid):
            if group is not None and group in owners:
                return owners[group]
        return None

    def _attribute(self, processes: Sequence[ProcessReading], owners: Mapping[int, ReplicaKey]) \
            -> tuple[list[ReplicaGpuUsage], list[ProcessReading]]:
        memory: dict[tuple[ReplicaKey, int], int] = {}
        pids: dict[tuple[ReplicaKey, int], list[int]] = {}
        unowned = []
        for proc in processes:
            owner = self._owner(proc.pid, owners)
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
            if key not in self._allocations or used_mib <= u.allowed_mib + self.policy.overuse_tolerance_mib:
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
