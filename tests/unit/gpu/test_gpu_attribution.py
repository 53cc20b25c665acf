"""Attributing GPU processes to replicas beyond the plain case: MPS clients and their server, pids of another
PID namespace (matched by card and replica marker), and the over-use tolerance per GPU model."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from gpupool.gpu.attribution import Marker, ProcView, marker_from_environ, owners_by_marker, pids_untranslated
from gpupool.gpu.fake import FakeBackend
from gpupool.gpu.monitor import GpuAllocation, GpuMonitor, MonitorPolicy, ReplicaKey
from gpupool.gpu.types import MIB, GpuReading, NodeSample, ProcessReading

GIB = 1024 * MIB
A = ReplicaKey("11", 0, "vision")
B = ReplicaKey("12", 0, "nlp")
C = ReplicaKey("13", 1, "nlp")


@dataclass
class FakeView:
    """A PID namespace where only `pids` exist."""

    pids: set[int] = field(default_factory=set)
    is_nested: bool = True
    found: list[Marker] = field(default_factory=list)

    def visible(self, pid: int) -> bool:
        return pid in self.pids

    def nested(self) -> bool:
        return self.is_nested

    def markers(self) -> list[Marker]:
        return list(self.found)


def _sample(*processes: ProcessReading) -> NodeSample:
    return NodeSample(0.0, tuple(GpuReading(i, f"GPU-{i}", 50.0) for i in range(2)), processes)


def test_mps_clients_are_attributed_and_the_mps_server_is_reported_apart() -> None:
    monitor = GpuMonitor("n", resolve=lambda pid: (None, pid // 100 * 100))  # sessions 600 (A) and 700 (B)
    sample = _sample(ProcessReading(0, 500, 300 * MIB, kind="compute"),       # nvidia-cuda-mps-server
                     ProcessReading(0, 601, 4 * GIB, kind="mps_client"),
                     ProcessReading(0, 702, 2 * GIB, kind="mps_client"),
                     ProcessReading(1, 900, 1 * GIB, kind="compute"))        # foreign use of card 1
    allocations = [GpuAllocation(A, 0, 500, 8192), GpuAllocation(B, 0, 250, 4096)]
    report = monitor.observe(sample, allocations, {600: A, 700: B})
    assert [(u.replica, u.memory_bytes) for u in report.usage] == [(A, 4 * GIB), (B, 2 * GIB)]
    assert [p.pid for p in report.mps_servers] == [500]
    assert [p.pid for p in report.unowned] == [900]  # a plain process on a card without MPS stays foreign


def test_pids_of_another_namespace_are_detected() -> None:
    procs = [ProcessReading(0, 4_000_123, GIB), ProcessReading(0, 4_000_200, GIB)]
    assert pids_untranslated(procs, FakeView(pids=set(), is_nested=False))        # none is ours
    assert not pids_untranslated(procs, FakeView(pids={4_000_123}, is_nested=False))  # one just ended: ours
    assert pids_untranslated(procs, FakeView(pids={4_000_123}, is_nested=True))   # in a container: any hidden
    assert not pids_untranslated([], FakeView())


def test_untranslated_pids_are_attributed_by_card_and_marker() -> None:
    # card 0 holds A alone; card 1 holds B and C, but only C's processes carry a marker naming card 1
    view = FakeView(found=[Marker(31, "11", 0, (0,)), Marker(45, "13", 1, (1,))])
    monitor = GpuMonitor("n", resolve=lambda pid: (None, None), view=view)
    allocations = [GpuAllocation(A, 0, 1000, 81920), GpuAllocation(B, 1, 500, 40960), GpuAllocation(C, 1, 500, 40960)]
    report = monitor.observe(_sample(ProcessReading(0, 9_000_001, 3 * GIB), ProcessReading(0, 9_000_002, GIB),
                                     ProcessReading(1, 9_000_003, 5 * GIB)), allocations, {})
    assert [(u.replica, u.gpu_index, u.memory_bytes) for u in report.usage] == [(A, 0, 4 * GIB), (C, 1, 5 * GIB)]
    assert report.attribution == "marker" and "another PID namespace" in report.attribution_note
    assert "container" in report.attribution_note and report.unowned == ()


def test_by_card_an_mps_server_is_still_not_counted_as_its_clients_replica() -> None:
    monitor = GpuMonitor("n", resolve=lambda pid: (None, None), view=FakeView())
    report = monitor.observe(_sample(ProcessReading(0, 9_000_500, 300 * MIB, kind="compute"),
                                     ProcessReading(0, 9_000_601, 4 * GIB, kind="mps_client")),
                             [GpuAllocation(A, 0, 500, 8192)], {})
    assert [(u.replica, u.memory_bytes) for u in report.usage] == [(A, 4 * GIB)]
    assert [p.pid for p in report.mps_servers] == [9_000_500]


def test_a_card_shared_by_several_live_replicas_stays_unattributed_and_says_so() -> None:
    found = owners_by_marker({1: [B, C]}, [Marker(1, "12", 0, (1,)), Marker(2, "13", 1, (1,))], nested=False)
    assert found.owners == {} and "GPU 1 hold several replicas" in found.note


def test_without_readable_markers_the_allocation_alone_decides() -> None:
    assert owners_by_marker({0: [A], 1: [B, C]}, [], nested=False).owners == {0: A}


def test_marker_from_an_environment_block() -> None:
    raw = b"PATH=/bin\0GPUPOOL_WORKLOAD_ID=42\0GPUPOOL_REPLICA=3\0GPUPOOL_GPU_INDICES=2,5\0"
    assert marker_from_environ(7, raw) == Marker(7, "42", 3, (2, 5))
    assert marker_from_environ(7, b"GPUPOOL_WORKLOAD_ID=42\0") is None


@pytest.fixture
def marked_child() -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "GPUPOOL_WORKLOAD_ID": "77", "GPUPOOL_REPLICA": "2", "GPUPOOL_GPU_INDICES": "0"}
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    yield child
    child.kill()
    child.wait()


def test_a_real_replica_process_is_found_by_its_marker_and_fake_host_pids_are_attributed(
        marked_child: subprocess.Popen[bytes]) -> None:
    """The whole path with real processes: a fake driver that reports host pids (none visible here), the
    real /proc view finds the child's marker, and its card's memory goes to its replica."""
    view = ProcView()
    deadline = time.monotonic() + 5
    while not any(m.pid == marked_child.pid for m in view.markers()) and time.monotonic() < deadline:
        time.sleep(0.05)  # its environment is readable once exec has happened
    assert Marker(marked_child.pid, "77", 2, (0,)) in view.markers()
    assert view.visible(os.getpid()) and not view.visible(9_999_999)
    backend = FakeBackend({"host_pids": True, "gpus": [{"model": "NVIDIA A100-SXM4-80GB", "memory": "80GiB"}],
                           "processes": [{"pid": marked_child.pid, "gpu": 0, "memory": "6GiB"}]}, epoch=0.0)
    replica = ReplicaKey("77", 2, "p")
    report = GpuMonitor("n", view=view).observe(backend.sample(1.0), [GpuAllocation(replica, 0, 1000, 81920)], {})
    assert [(u.replica, u.memory_bytes) for u in report.usage] == [(replica, 6 * GIB)]
    assert report.attribution == "marker"


def test_with_translated_pids_nothing_changes() -> None:
    view = FakeView(pids={1001}, is_nested=True)
    monitor = GpuMonitor("n", resolve=lambda pid: (None, 1000), view=view)
    report = monitor.observe(_sample(ProcessReading(0, 1001, GIB)), [GpuAllocation(A, 0, 1000, 81920)], {1000: A})
    assert report.attribution == "pid" and report.attribution_note == "" and report.usage[0].replica == A


@pytest.mark.parametrize(("model", "tolerance"), [
    ("H100-80GB-HBM3", 1024),      # the family entry "H100"
    ("H100-PCIE", 1536),           # its own, longer entry wins
    ("A100-SXM4-80GB", 512),       # no entry: the default
])
def test_the_overuse_tolerance_is_chosen_by_model(model: str, tolerance: int) -> None:
    policy = MonitorPolicy(overuse_tolerance_mib=512, overuse_tolerance_by_model={"H100": 1024, "h100 pcie": 1536})
    assert policy.tolerance_for(model) == tolerance


def test_a_replica_at_its_cap_plus_its_context_is_not_over_on_a_model_with_a_larger_context() -> None:
    # 10 GiB allowed; the process holds 10 GiB + 800 MiB (its CUDA context): over with a 512 MiB tolerance,
    # within the 1024 MiB configured for H100
    policy = MonitorPolicy(overuse_grace_s=0, overuse_tolerance_mib=512, overuse_tolerance_by_model={"H100": 1024})
    process = ProcessReading(0, 1001, 10 * GIB + 800 * MIB)
    for model, events in (("H100-80GB-HBM3", 0), ("A100-SXM4-80GB", 1)):
        monitor = GpuMonitor("n", policy, resolve=lambda pid: (None, 1000))
        report = monitor.observe(_sample(process), [GpuAllocation(A, 0, 500, 10240, model)], {1000: A})
        assert len(report.overuse) == events, model


def test_the_default_tolerance_covers_the_context_measured_on_an_h200() -> None:
    # benchmarks/gpu/check_gpu.py on an H200 (driver 580.159, CUDA 13.0, torch 2.11): 2048 MiB reserved by
    # PyTorch at its cap, 2658 MiB in NVML's process list (a 610 MiB context): not over-use by default
    monitor = GpuMonitor("n", MonitorPolicy(overuse_grace_s=0), resolve=lambda pid: (None, 1000))
    at_cap = ProcessReading(0, 1001, 2658 * MIB)
    report = monitor.observe(_sample(at_cap), [GpuAllocation(A, 0, 500, 2048, "H200")], {1000: A})
    assert report.overuse == ()
