"""The monitor: attributing processes to replicas, over-use, idle allocations, health; and the bounded
time series it feeds."""

from __future__ import annotations

import os

import pytest

from gpupool.domain.nodes import Gpu
from gpupool.domain.resources import SharingMode
from gpupool.gpu.monitor import (
    GpuAllocation,
    GpuMonitor,
    MonitorPolicy,
    ReplicaKey,
    allocations_for,
    process_groups,
)
from gpupool.gpu.timeseries import Point, Resolution, Series, SeriesStore
from gpupool.gpu.types import GpuErrorEvent, GpuReading, NodeSample, ProcessReading
from gpupool.scheduler.types import GpuAssignment

GIB = 1024**3
TRAIN = ReplicaKey("train-1", 0, "vision")
NOTEBOOK = ReplicaKey("nb-7", 0, "nlp")


def _groups(pid: int) -> tuple[int | None, int | None]:
    """pids 1000-1999 belong to session 1000, 2000-2999 to process group 2000; others to nobody."""
    if 1000 <= pid < 2000:
        return 5, 1000
    if 2000 <= pid < 3000:
        return 2000, 7
    return None, None


def _sample(t: float, util: float = 50.0, processes: tuple[ProcessReading, ...] = (),
            errors: tuple[GpuErrorEvent, ...] = (), ecc: int | None = 0) -> NodeSample:
    readings = tuple(GpuReading(i, f"GPU-{i}", util, 10 * GIB, 80 * GIB, 200.0, 50.0, ecc) for i in range(2))
    return NodeSample(t, readings, processes, errors)


ALLOCATIONS = [GpuAllocation(TRAIN, 0, 500, 20 * 1024), GpuAllocation(NOTEBOOK, 1, 250, 10 * 1024)]
OWNERS = {1000: TRAIN, 2000: NOTEBOOK}


def _monitor(**policy: object) -> GpuMonitor:
    return GpuMonitor("n1", MonitorPolicy(**policy), resolve=_groups)  # type: ignore[arg-type]


def test_processes_are_attributed_through_session_and_group_ids() -> None:
    procs = (ProcessReading(0, 1001, 6 * GIB), ProcessReading(0, 1002, 4 * GIB), ProcessReading(1, 2500, 1 * GIB),
             ProcessReading(1, 9999, 3 * GIB), ProcessReading(0, 1000, None))
    report = _monitor().observe(_sample(0.0, processes=procs), ALLOCATIONS, OWNERS)
    assert [(u.replica, u.gpu_index, u.memory_bytes, u.allowed_mib, u.pids) for u in report.usage] == [
        (NOTEBOOK, 1, 1 * GIB, 10240, (2500,)),
        (TRAIN, 0, 10 * GIB, 20480, (1000, 1001, 1002)),
    ]
    assert [p.pid for p in report.unowned] == [9999]  # someone using the GPU outside gpupool
    assert report.workload_memory_bytes() == {TRAIN: 10 * GIB, NOTEBOOK: 1 * GIB}


def test_a_remote_nodes_sample_is_attributed_by_the_groups_resolved_on_that_node() -> None:
    """A sample carrying process groups (taken by a cluster node's agent) is attributed by them alone: the
    monitor's own resolver (this machine's pids) is never asked."""

    def here(pid: int) -> tuple[int | None, int | None]:
        raise AssertionError(f"pid {pid} was resolved on the server")

    procs = (ProcessReading(0, 41, 6 * GIB), ProcessReading(1, 42, 1 * GIB), ProcessReading(1, 43, 3 * GIB))
    groups = ((41, 41, 1000), (42, 2000, 2000), (43, None, None))  # 43: gone before the agent resolved it
    sample = NodeSample(0.0, _sample(0.0).gpus, procs, process_groups=groups)
    report = GpuMonitor("n1", MonitorPolicy(), resolve=here).observe(sample, ALLOCATIONS, OWNERS)
    assert [(u.replica, u.gpu_index, u.memory_bytes) for u in report.usage] == [
        (NOTEBOOK, 1, 1 * GIB), (TRAIN, 0, 6 * GIB)]
    assert [p.pid for p in report.unowned] == [43]


def test_over_use_is_reported_once_after_the_grace_period() -> None:
    monitor = _monitor(overuse_tolerance_mib=512, overuse_grace_s=10.0)
    # 21 GiB used of 20 GiB allowed: 21504 MiB > 20480 + 512 MiB of tolerance
    over = (ProcessReading(0, 1001, 21 * GIB),)
    assert monitor.observe(_sample(0.0, processes=over), ALLOCATIONS, OWNERS).overuse == ()
    assert monitor.observe(_sample(5.0, processes=over), ALLOCATIONS, OWNERS).overuse == ()
    (event,) = monitor.observe(_sample(10.0, processes=over), ALLOCATIONS, OWNERS).overuse
    assert (event.replica, event.gpu_index, event.used_mib, event.allowed_mib, event.since, event.kill) == (
        TRAIN, 0, 21504, 20480, 0.0, False)
    assert "uses 21504 MiB on GPU 0, more than the 20480 MiB it asked for" in event.message
    assert monitor.observe(_sample(15.0, processes=over), ALLOCATIONS, OWNERS).overuse == ()
    # back under the allowance, then over again: a new episode, a new event
    monitor.observe(_sample(20.0, processes=(ProcessReading(0, 1001, 2 * GIB),)), ALLOCATIONS, OWNERS)
    monitor.observe(_sample(30.0, processes=over), ALLOCATIONS, OWNERS)
    assert len(monitor.observe(_sample(40.0, processes=over), ALLOCATIONS, OWNERS).overuse) == 1


def test_within_the_tolerance_is_not_over_use_and_kill_follows_policy() -> None:
    # 20.4 GiB = 20890 MiB <= 20480 + 512: CUDA context overhead, not over-use
    near = (ProcessReading(0, 1001, int(20.4 * GIB)),)
    assert _monitor(overuse_grace_s=0).observe(_sample(0.0, processes=near), ALLOCATIONS, OWNERS).overuse == ()
    killing = _monitor(overuse_grace_s=0, overuse_kill=True)
    (event,) = killing.observe(_sample(0.0, processes=(ProcessReading(0, 1001, 30 * GIB),)), ALLOCATIONS,
                               OWNERS).overuse
    assert event.kill and "stopping it" in event.message


def test_idle_allocations_become_the_wasted_gpu_report() -> None:
    monitor = _monitor(idle_max_pct=5.0, idle_after_s=600.0)
    assert monitor.observe(_sample(0.0, util=2.0), ALLOCATIONS, OWNERS).newly_idle == ()
    assert monitor.observe(_sample(300.0, util=4.0), ALLOCATIONS, OWNERS).newly_idle == ()
    report = monitor.observe(_sample(600.0, util=1.0), ALLOCATIONS, OWNERS)
    assert [(i.replica, i.gpu_index, i.idle_since, i.idle_for_s) for i in report.newly_idle] == [
        (NOTEBOOK, 1, 0.0, 600.0), (TRAIN, 0, 0.0, 600.0)]
    assert monitor.observe(_sample(900.0, util=1.0), ALLOCATIONS, OWNERS).newly_idle == ()  # reported once
    wasted = monitor.wasted(900.0)
    assert [(w.replica.workload_id, w.idle_for_s, w.milli) for w in wasted] == [("nb-7", 900.0, 250),
                                                                                ("train-1", 900.0, 500)]
    assert "holds GPU 0 (0.5 GPU) but it has been idle for 15 min" in wasted[1].message
    monitor.observe(_sample(960.0, util=60.0), ALLOCATIONS, OWNERS)  # busy again: the clock restarts
    assert monitor.wasted(960.0) == []
    # a replica that ended leaves the report
    monitor.observe(_sample(1000.0, util=0.0), ALLOCATIONS[:1], OWNERS)
    monitor.observe(_sample(1700.0, util=0.0), ALLOCATIONS[:1], OWNERS)
    assert [w.replica for w in monitor.wasted(1700.0)] == [TRAIN]


def test_unknown_utilisation_never_counts_as_idle() -> None:
    monitor = _monitor(idle_after_s=0.0)
    readings = (GpuReading(0, "GPU-0", None), GpuReading(1, "GPU-1", None))
    assert monitor.observe(NodeSample(0.0, readings), ALLOCATIONS, OWNERS).newly_idle == ()


def test_hardware_errors_mark_gpus_unhealthy_until_cleared() -> None:
    monitor = _monitor()
    errors = (GpuErrorEvent(0, "xid", 31, "XID 31"), GpuErrorEvent(1, "xid", 79, "XID 79"))
    report = monitor.observe(_sample(0.0, errors=errors), ALLOCATIONS, OWNERS)
    assert [(h.gpu_index, h.marks_unhealthy) for h in report.health] == [(0, False), (1, True)]
    assert report.unhealthy == {1: "XID 79"}
    assert "caused by an application" in report.health[0].reason
    # more errors on an unhealthy GPU add no new event; the mark is sticky until an admin clears it
    again = monitor.observe(_sample(5.0, errors=(GpuErrorEvent(1, "xid", 48, "XID 48"),)), ALLOCATIONS, OWNERS)
    assert again.health == () and again.unhealthy == {1: "XID 79"}
    monitor.clear_unhealthy(1)
    assert monitor.unhealthy == {}


def test_a_rising_uncorrectable_ecc_count_marks_the_gpu() -> None:
    monitor = _monitor()
    monitor.observe(_sample(0.0, ecc=0), ALLOCATIONS, OWNERS)
    report = monitor.observe(_sample(5.0, ecc=2), ALLOCATIONS, OWNERS)
    assert report.unhealthy == {0: "2 uncorrectable ECC error(s) since boot",
                                1: "2 uncorrectable ECC error(s) since boot"}
    assert monitor.observe(_sample(10.0, ecc=None), ALLOCATIONS, OWNERS).health == ()


def test_samples_feed_the_series() -> None:
    monitor = _monitor()
    for t in (0.0, 5.0, 10.0):
        monitor.observe(_sample(t, processes=(ProcessReading(0, 1001, 3 * GIB),)), ALLOCATIONS, OWNERS)
    assert [p.mean for p in monitor.series.query(("gpu", "n1", "0", "utilization_pct"), 0.0)] == [50.0] * 3
    assert monitor.series.query(("workload", "train-1", "n1", "gpu_memory_bytes"), 5.0)[0].mean == 3 * GIB


def test_allocations_come_from_scheduler_assignments() -> None:
    gpus = [Gpu(0, "A100", 81920, SharingMode.SHARED), Gpu(1, "A100", 81920)]
    allocations = allocations_for(TRAIN, [GpuAssignment(0, 250, 20480), GpuAssignment(1, 1000, 0)], gpus)
    assert [(a.gpu_index, a.milli, a.memory_mib) for a in allocations] == [(0, 250, 20480), (1, 1000, 81920)]


def test_process_groups_reads_real_ids() -> None:
    assert process_groups(os.getpid()) == (os.getpgid(0), os.getsid(0))
    assert process_groups(2**22 + 12345) == (None, None)


# ------------------------------------------------------------------------------------------ series
def test_raw_points_are_kept_up_to_their_bound() -> None:
    series = Series((Resolution(0, 3),))
    for t in range(5):
        series.add(float(t), float(t * 10))
    assert series.points(0.0) == [Point(2.0, 20.0, 20.0), Point(3.0, 30.0, 30.0), Point(4.0, 40.0, 40.0)]


def test_coarser_resolutions_keep_means_and_maxima_for_longer() -> None:
    series = Series((Resolution(0, 4), Resolution(60, 10)))
    for t in range(0, 180, 10):  # 18 samples, value = t
        series.add(float(t), float(t))
    # raw holds only the last 4 (t = 140..170), so a query from 0 s uses the minute buckets:
    # [0, 60): mean of 0..50 = 25, max 50; [60, 120): mean 85, max 110; [120, 180) open: mean 145, max 170
    assert series.points(0.0) == [Point(0.0, 25.0, 50.0), Point(60.0, 85.0, 110.0), Point(120.0, 145.0, 170.0)]
    assert [p.t for p in series.points(150.0)] == [150.0, 160.0, 170.0]  # recent enough for raw points
    # merged to 2 points: means averaged (25, 85 -> 55), maxima kept
    assert series.points(0.0, max_points=2) == [Point(0.0, 55.0, 110.0), Point(120.0, 145.0, 170.0)]


def test_late_samples_do_not_reopen_closed_intervals() -> None:
    series = Series((Resolution(60, 10),))
    series.add(0.0, 1.0)
    series.add(70.0, 5.0)
    series.add(30.0, 100.0)  # arrives after its minute was closed
    assert series.points(0.0) == [Point(0.0, 1.0, 1.0), Point(60.0, 5.0, 5.0)]


def test_stale_series_are_dropped() -> None:
    store = SeriesStore()
    store.add(("workload", "old"), 0.0, 1.0)
    store.add(("workload", "live"), 1000.0, 1.0)
    store.add(("gpu", "n1", "0"), 0.0, 1.0)
    assert store.drop_stale(now=4000.0, older_than_s=3600.0, keep=[("gpu", "n1", "0")]) == 1
    assert store.keys() == [("workload", "live"), ("gpu", "n1", "0")]
    assert store.query(("workload", "old"), 0.0) == [] and store.get(("workload", "live")) is not None


@pytest.mark.parametrize("samples", [10_000])
def test_memory_stays_bounded_whatever_the_uptime(samples: int) -> None:
    series = Series()
    for k in range(samples):
        series.add(k * 5.0, 1.0)
    # default rings: 720 raw + 1440 minute + 2880 quarter-hour points at most. 10,000 samples every 5 s
    # span 13.9 h: the minute ring still covers the start (834 points); the last 10 min are 120 raw samples
    assert len(series.points(0.0)) == 834 and len(series.points(samples * 5.0 - 600)) == 120
    for k in range(samples, 4 * samples):  # 55.6 h: the minute ring wrapped, quarter-hours answer
        series.add(k * 5.0, 1.0)
    assert len(series.points(0.0)) == 223
