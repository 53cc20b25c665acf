"""The GPU layer inside one running server: each local node's GPU backend and monitor, the shared time
series, the Prometheus metrics, the MPS manager and the sharing set-up.

What must survive a restart (inventory, sharing modes, MIG layouts, health marks, MPS daemon states) is in
the store; this object holds what is rebuilt at start-up: backends, the monitors' timers, the latest
readings and the downsampled history (in memory, bounded).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from gpupool.domain.errors import NotFoundError
from gpupool.gpu.attribution import ProcView
from gpupool.gpu.metrics import GpuMetrics
from gpupool.gpu.monitor import GpuMonitor, MonitorPolicy, MonitorReport
from gpupool.gpu.mps import MpsManager
from gpupool.gpu.sharing import SharingConfig
from gpupool.gpu.timeseries import SeriesStore
from gpupool.gpu.types import GpuInventory, NodeSample
from gpupool.server.local_node import LocalGpus, LocalNode
from gpupool.server.settings import Settings
from gpupool.server.usage_ledger import UsageLedger

log = logging.getLogger("gpupool.gpus")


@dataclass
class NodeGpus:
    """One local node's GPUs at run time. Backend calls (sampling, discovery, MIG changes) take `lock`, so
    that the sampler and an admin's MIG change never talk to NVML at the same time."""

    name: str
    local: LocalGpus
    monitor: GpuMonitor
    last_report: MonitorReport | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def simulated(self) -> bool:
        """True when the node's cards stand for no real device."""
        return self.local.simulated

    def sample(self, now: float) -> NodeSample:
        """One reading of every GPU of the node (blocks while a MIG change runs)."""
        with self.lock:
            return self.local.backend.sample(now)

    def discover(self) -> GpuInventory:
        """Discover the node's GPUs again (after a MIG change) and keep the new inventory."""
        with self.lock:
            self.local.inventory = self.local.backend.discover()
            return self.local.inventory


class GpuRuntime:
    """The GPU layer of one server (see the module docstring). `lock` guards the monitors, the series and
    the latest reports, which the sampler thread writes and request threads read."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sharing = SharingConfig(settings.home, settings.hami_library)
        self.series = SeriesStore()
        self.metrics = GpuMetrics()
        self.ledger = UsageLedger(settings.usage_flush_interval_s)
        self.mps = MpsManager(settings.home, control=settings.mps_control,
                              set_compute_mode=settings.mps_set_compute_mode)
        self.nodes: dict[str, NodeGpus] = {}
        self.lock = threading.RLock()
        self.mps_lock = threading.Lock()  # one MPS reconcile at a time (the sampler's and an admin's)

    def policy(self, simulated: bool) -> MonitorPolicy:
        """The monitor thresholds from the settings; simulated cards never count as idle (nothing could use
        them, so calling them wasted says nothing)."""
        s = self.settings
        return MonitorPolicy(overuse_tolerance_mib=s.overuse_tolerance_mib, overuse_grace_s=s.overuse_grace_s,
                             overuse_kill=s.overuse_kill, idle_max_pct=s.idle_max_pct,
                             idle_after_s=math.inf if simulated else s.idle_after_s,
                             overuse_tolerance_by_model=dict(s.overuse_tolerance_by_model))

    def add(self, local: LocalNode) -> NodeGpus:
        """Start watching the GPUs of a local node (replaces an earlier entry of the same name)."""
        # detects pids of another PID namespace (a remote node's agent resolves its pids on the node itself)
        view = None if local.gpus.simulated or local.gpus.remote else ProcView()
        node = NodeGpus(local.node.name, local.gpus,
                        GpuMonitor(local.node.name, self.policy(local.gpus.simulated), self.series, view=view))
        with self.lock:
            previous = self.nodes.get(node.name)
            self.nodes[node.name] = node
        if previous is not None and previous.local.backend is not local.gpus.backend:
            previous.local.backend.close()
        return node

    def remove(self, name: str) -> None:
        """Stop watching the GPUs of a node that left the pool (nothing for an unknown name)."""
        with self.lock:
            previous = self.nodes.pop(name, None)
        if previous is not None:
            previous.local.backend.close()

    def node(self, name: str) -> NodeGpus:
        """The GPUs of local node `name`; NotFoundError when this server does not run that node."""
        found = self.nodes.get(name)
        if found is None:
            known = ", ".join(sorted(self.nodes)) or "none"
            raise NotFoundError(f"node {name!r} is not a node of this server (its nodes: {known})")
        return found

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Hold the lock while reading monitors, series or reports."""
        with self.lock:
            yield

    def close(self) -> None:
        """Release every backend (NVML); idempotent. MPS daemons keep running for the replicas using them."""
        with self.lock:
            nodes, self.nodes = list(self.nodes.values()), {}
        for node in nodes:
            try:
                node.local.backend.close()
            except Exception:
                log.exception("closing the GPU backend of node %s failed", node.name)
