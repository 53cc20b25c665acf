"""Prometheus exposition: names, labels and values, stale series dropped, one registry per app."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from tests.builders import node, on

from gpupool.domain.nodes import Gpu
from gpupool.gpu.metrics import GpuMetrics
from gpupool.gpu.monitor import IdleAllocation, MonitorReport, OveruseEvent, ReplicaGpuUsage, ReplicaKey
from gpupool.gpu.types import GpuReading
from gpupool.scheduler.snapshot import ClusterSnapshot

GIB = 1024**3
TRAIN = ReplicaKey("train-1", 0, "vision")


def _values(metrics: GpuMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _report(node_name: str = "n1", unhealthy: dict[int, str] | None = None) -> MonitorReport:
    readings = (GpuReading(0, "GPU-a", 75.0, 30 * GIB, 80 * GIB, 250.5, 61.0, 0),
                GpuReading(1, "GPU-b", None, None, 80 * GIB, None, None, None))
    usage = (ReplicaGpuUsage(TRAIN, 0, 12 * GIB, 20480, (10,)), ReplicaGpuUsage(ReplicaKey("train-1", 1, "vision"),
                                                                               1, 8 * GIB, 20480, (11,)))
    return MonitorReport(0.0, node_name, readings, usage, (), unhealthy=unhealthy or {})


def test_gpu_and_workload_gauges_carry_the_readings() -> None:
    metrics = GpuMetrics()
    cards = {"n1": [Gpu(0, "A100-SXM4-80GB", 81920, uuid="GPU-a"), Gpu(1, "A100-SXM4-80GB", 81920, uuid="GPU-b")]}
    metrics.update_gpus([_report(unhealthy={1: "XID 79"})], cards)
    values = _values(metrics)
    gpu0 = (("gpu", "0"), ("model", "A100-SXM4-80GB"), ("node", "n1"), ("uuid", "GPU-a"))
    gpu1 = (("gpu", "1"), ("model", "A100-SXM4-80GB"), ("node", "n1"), ("uuid", "GPU-b"))
    assert values[("gpupool_gpu_utilization", gpu0)] == 0.75
    assert values[("gpupool_gpu_memory_used_bytes", gpu0)] == 30 * GIB
    assert values[("gpupool_gpu_memory_total_bytes", gpu1)] == 80 * GIB
    assert values[("gpupool_gpu_power_watts", gpu0)] == 250.5
    assert values[("gpupool_gpu_temperature_celsius", gpu0)] == 61.0
    assert (values[("gpupool_gpu_healthy", gpu0)], values[("gpupool_gpu_healthy", gpu1)]) == (1.0, 0.0)
    # values NVML could not give are absent, not zero
    assert ("gpupool_gpu_utilization", gpu1) not in values
    # both replicas of train-1: 12 + 8 GiB
    assert values[("gpupool_workload_gpu_memory_used_bytes", (("project", "vision"), ("workload", "train-1")))] \
        == 20 * GIB


def test_each_update_replaces_the_previous_series() -> None:
    metrics = GpuMetrics()
    metrics.update_gpus([_report()], {})
    metrics.update_gpus([MonitorReport(1.0, "n1", (), (), ())], {})
    assert not any(name.startswith(("gpupool_gpu_utilization", "gpupool_workload")) for name, _ in _values(metrics))


def test_idle_allocations_are_listed_per_node() -> None:
    metrics = GpuMetrics()
    metrics.update_idle("n1", [IdleAllocation(TRAIN, 0, 1000, 0.0, 3600.0)])
    metrics.update_idle("n2", [IdleAllocation(TRAIN, 3, 500, 0.0, 3600.0)])
    metrics.update_idle("n1", [])
    idle = {labels: v for (name, labels), v in _values(metrics).items() if name == "gpupool_gpu_idle_allocated"}
    assert idle == {(("gpu", "3"), ("node", "n2"), ("workload", "train-1")): 1.0}


def test_queue_depth_and_allocation_ratio_come_from_scheduler_state() -> None:
    snapshot = ClusterSnapshot([node("a").gpus(4).build(), node("b").gpus(4).build(), node("cpu").build()])
    snapshot.assume(on("a", gpus={0: 1000, 1: 1000, 2: 500}))
    metrics = GpuMetrics()
    metrics.update_scheduler(snapshot, {"vision": 3, "nlp": 0})
    values = _values(metrics)
    # node a: 2500 of 4000 milli; the pool: 2500 of 8000 (the CPU-only node has no GPU capacity)
    assert values[("gpupool_node_gpu_allocation_ratio", (("node", "a"),))] == 0.625
    assert values[("gpupool_node_gpu_allocation_ratio", (("node", "b"),))] == 0.0
    assert ("gpupool_node_gpu_allocation_ratio", (("node", "cpu"),)) not in values
    assert values[("gpupool_gpu_allocation_ratio", ())] == 2500 / 8000
    assert values[("gpupool_queue_depth", (("queue", "vision"),))] == 3.0
    assert values[("gpupool_queue_depth", (("queue", "nlp"),))] == 0.0


def test_two_apps_keep_separate_registries() -> None:
    first, second = GpuMetrics(), GpuMetrics()
    first.update_scheduler(ClusterSnapshot([node("a").gpus(1).build()]), {"q": 5})
    assert ("gpupool_queue_depth", (("queue", "q"),)) not in _values(second)
    assert first.content_type.startswith("text/plain")


def test_overuse_events_are_counted_and_forgotten_when_their_workload_ended() -> None:
    metrics = GpuMetrics()
    event = OveruseEvent(5.0, TRAIN, 0, 14336, 10240, 0.0, False)
    metrics.record_overuse("n1", [event, event])
    key = ("gpupool_gpu_overuse_events_total", (("gpu", "0"), ("node", "n1"), ("project", "vision"),
                                                ("workload", "train-1")))
    assert _values(metrics)[key] == 2
    metrics.forget_workloads({"train-1"})
    assert _values(metrics)[key] == 2
    metrics.forget_workloads(set())
    assert key not in _values(metrics)
