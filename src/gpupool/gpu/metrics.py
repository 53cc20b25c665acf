"""Prometheus exposition of GPU readings and scheduler state (prometheus-client, one registry per app).

Metric names (units in the name, ratios between 0 and 1, as Prometheus conventions ask):

| name | labels | meaning |
|---|---|---|
| gpupool_gpu_utilization | node, gpu, uuid, model | GPU busy ratio over NVML's last sample period (0-1) |
| gpupool_gpu_memory_used_bytes | node, gpu, uuid, model | device memory in use |
| gpupool_gpu_memory_total_bytes | node, gpu, uuid, model | device memory |
| gpupool_gpu_power_watts | node, gpu, uuid, model | power draw |
| gpupool_gpu_temperature_celsius | node, gpu, uuid, model | core temperature |
| gpupool_gpu_healthy | node, gpu, uuid, model | 1, or 0 after an XID / ECC error |
| gpupool_workload_gpu_memory_used_bytes | workload, project | GPU memory held by a workload's processes |
| gpupool_gpu_idle_allocated | node, gpu, workload | 1 for each allocation idle past the threshold |
| gpupool_gpu_overuse_events_total | node, gpu, workload, project | over-use events (more GPU memory than asked) |
| gpupool_queue_depth | queue | pending workloads |
| gpupool_gpu_allocation_ratio | (none) | allocated GPU capacity / schedulable GPU capacity |
| gpupool_node_gpu_allocation_ratio | node | the same per node |

Each `update_*` replaces the values of its metrics (series of GPUs, workloads or queues that are gone
disappear), so the caller passes the full current state every time. The over-use counter only grows;
`forget_workloads` drops the series of workloads that ended.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily

from gpupool.domain.nodes import Gpu
from gpupool.gpu.monitor import IdleAllocation, MonitorReport, OveruseEvent
from gpupool.scheduler.snapshot import ClusterSnapshot

GPU_LABELS = ("node", "gpu", "uuid", "model")


class GpuMetrics:
    """The gauges of one gpupool server, in their own CollectorRegistry (never the global one)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._idle_labels: dict[str, set[tuple[str, str, str]]] = {}
        self._overuse_labels: set[tuple[str, str, str, str]] = set()

        def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
            return Gauge(name, doc, labels, registry=self.registry)

        self.gpu_readings = GpuReadings()
        self.registry.register(self.gpu_readings)
        self.idle_allocated = gauge("gpupool_gpu_idle_allocated", "Allocations idle past the threshold",
                                    ("node", "gpu", "workload"))
        self.queue_depth = gauge("gpupool_queue_depth", "Pending workloads per queue", ("queue",))
        self.allocation = gauge("gpupool_gpu_allocation_ratio", "Allocated / schedulable GPU capacity")
        self.node_allocation = gauge("gpupool_node_gpu_allocation_ratio", "Allocated / schedulable GPU capacity",
                                     ("node",))
        self.overuse_events = Counter("gpupool_gpu_overuse_events", "Replicas caught holding more GPU memory "
                                      "than they asked for", ("node", "gpu", "workload", "project"),
                                      registry=self.registry)

    def update_gpus(self, reports: Iterable[MonitorReport], gpus: Mapping[str, Sequence[Gpu]]) -> None:
        """GPU gauges and per-workload memory from the latest report of every node; `gpus` gives each
        node's cards (for uuid, model and health labels/values). Kept as given and turned into series when
        /metrics is read (`GpuReadings`)."""
        self.gpu_readings.set(list(reports), dict(gpus))

    def update_idle(self, node: str, idle: Iterable[IdleAllocation]) -> None:
        """The "wasted GPU" allocations of one node (replaces that node's previous values only)."""
        for labels in self._idle_labels.pop(node, set()):
            self.idle_allocated.remove(*labels)
        current = {(node, str(item.gpu_index), item.replica.workload_id) for item in idle}
        for labels in sorted(current):
            self.idle_allocated.labels(*labels).set(1)
        self._idle_labels[node] = current

    def record_overuse(self, node: str, events: Iterable[OveruseEvent]) -> None:
        """Count over-use events of one node."""
        for event in events:
            labels = (node, str(event.gpu_index), event.replica.workload_id, event.replica.project)
            self.overuse_events.labels(*labels).inc()
            self._overuse_labels.add(labels)

    def forget_workloads(self, keep: Iterable[str]) -> None:
        """Drop the over-use series of every workload not in `keep` (those that ended)."""
        kept = set(keep)
        for labels in sorted(self._overuse_labels):
            if labels[2] not in kept:
                self.overuse_events.remove(*labels)
                self._overuse_labels.discard(labels)

    def update_scheduler(self, snapshot: ClusterSnapshot, queue_depth: Mapping[str, int]) -> None:
        """Queue depth per queue and GPU allocation ratios from the scheduler's snapshot (healthy cards of
        schedulable nodes count as capacity)."""
        self.queue_depth.clear()
        for queue, depth in sorted(queue_depth.items()):
            self.queue_depth.labels(queue).set(depth)
        self.node_allocation.clear()
        allocated = capacity = 0
        for row, node in enumerate(snapshot.nodes):
            cap = int(snapshot.cap_gpu[row])
            if cap <= 0 or not snapshot.schedulable[row]:
                continue
            used = cap - int(snapshot.free_gpu_total[row])
            self.node_allocation.labels(node.name).set(used / cap)
            allocated, capacity = allocated + used, capacity + cap
        self.allocation.set(allocated / capacity if capacity else 0.0)

    def render(self) -> bytes:
        """The exposition text for `/metrics` (serve with `content_type`)."""
        return generate_latest(self.registry)



class GpuReadings:
    """A prometheus collector of the GPU gauges (utilization, memory, power, temperature, health, and GPU
    memory per workload) from the latest reports, built when /metrics is read: hundreds of cards are sampled
    every few seconds and scraped far less often, so the series are not updated on every sample."""

    _GPU_FAMILIES = (
        ("gpupool_gpu_utilization", "GPU busy ratio (0-1)"),
        ("gpupool_gpu_memory_used_bytes", "GPU memory in use"),
        ("gpupool_gpu_memory_total_bytes", "GPU memory"),
        ("gpupool_gpu_power_watts", "GPU power draw"),
        ("gpupool_gpu_temperature_celsius", "GPU temperature"),
        ("gpupool_gpu_healthy", "1 when the GPU is healthy, 0 after XID/ECC errors"),
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reports: list[MonitorReport] = []
        self._cards: dict[str, Sequence[Gpu]] = {}

    def set(self, reports: list[MonitorReport], cards: dict[str, Sequence[Gpu]]) -> None:
        """Replace the readings (reports are not changed afterwards: a new sample makes new ones)."""
        with self._lock:
            self._reports, self._cards = reports, cards

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The gauge families of the latest readings (a series only for a value the report has)."""
        with self._lock:
            reports, cards_of = self._reports, self._cards
        families = [GaugeMetricFamily(name, doc, labels=GPU_LABELS) for name, doc in self._GPU_FAMILIES]
        utilization, memory_used, memory_total, power, temperature, healthy = families
        workload_bytes: dict[tuple[str, str], int] = {}
        for report in reports:
            cards = {g.index: g for g in cards_of.get(report.node, ())}
            for r in report.gpus:
                card = cards.get(r.index)
                labels = [report.node, str(r.index), r.uuid, card.model if card else ""]
                for family, value in ((utilization, None if r.utilization_pct is None else r.utilization_pct / 100),
                                      (memory_used, r.memory_used_bytes), (memory_total, r.memory_total_bytes),
                                      (power, r.power_w), (temperature, r.temperature_c)):
                    if value is not None:
                        family.add_metric(labels, value)
                fine = (card is None or card.healthy) and r.index not in report.unhealthy
                healthy.add_metric(labels, 1 if fine else 0)
            for replica, used in report.workload_memory_bytes().items():
                key = (replica.workload_id, replica.project)
                workload_bytes[key] = workload_bytes.get(key, 0) + used
        workload_memory = GaugeMetricFamily("gpupool_workload_gpu_memory_used_bytes",
                                            "GPU memory held by a workload's processes", labels=("workload", "project"))
        for (workload, project), used in sorted(workload_bytes.items()):
            workload_memory.add_metric([workload, project], used)
        yield from (*families, workload_memory)

