"""Running work on capacity the snapshot no longer has (a node that left the pool, a card its node no longer
reports) holds nothing in the snapshot and breaks no cycle: reservations, holds and preemption look past it.

A driver may drop a node from the pool while the work on it is still reported running for a few cycles (it is
declared lost later); a cycle must not fail meanwhile.
"""

from __future__ import annotations

from tests.builders import job, node, on, running

from gpupool.scheduler.cycle import run_cycle
from gpupool.scheduler.profile import SchedulerProfile
from gpupool.scheduler.snapshot import ClusterSnapshot
from gpupool.scheduler.types import RunningWorkload


def loaded(runs: list[RunningWorkload]) -> ClusterSnapshot:
    """n1 with 4 cards and `runs` assumed as a server loads them (with force: whatever the pool holds now)."""
    snap = ClusterSnapshot([node("n1").gpus(4).build()])
    for r in runs:
        snap.assume_all(r.placements, force=True)
    return snap


def test_a_bounded_workload_partly_on_a_node_that_left_gives_a_reservation() -> None:
    runs = [running("r0", [on("n1", gpus={0: 1000, 1: 1000, 2: 1000}), on("gone", gpus={0: 1000})], priority=9,
                    start=500.0, max_runtime=1000.0)]
    decisions = run_cycle(loaded(runs), [job("head").at(900).gpu(4).build()], runs, {}, SchedulerProfile(), 1000.0)
    assert [(r.workload_id, r.start_time) for r in decisions.reservations] == [("head", 1500.0)]
    assert not decisions.binds


def test_a_victim_partly_on_a_node_that_left_is_preempted_for_what_it_frees_here() -> None:
    runs = [running("low", [on("n1", gpus=dict.fromkeys(range(4), 1000)), on("gone", gpus={0: 1000})], priority=0,
                    start=-1000.0)]
    decisions = run_cycle(loaded(runs), [job("high").at(5).gpu(4).priority(5).build()], runs, {}, SchedulerProfile(),
                          10.0)
    assert [(p.victim_id, p.preemptor_id) for p in decisions.preemptions] == [("low", "high")]


def test_a_victim_only_on_a_node_that_left_frees_nothing_and_is_left_alone() -> None:
    runs = [running("busy", [on("n1", gpus=dict.fromkeys(range(4), 1000))], priority=9, start=0.0),
            running("elsewhere", [on("gone", gpus={0: 1000})], priority=0, start=-1000.0)]
    decisions = run_cycle(loaded(runs), [job("high").at(5).gpu(1).priority(5).build()], runs, {}, SchedulerProfile(),
                          10.0)
    assert not decisions.preemptions and not decisions.binds


def test_a_card_its_node_no_longer_reports_holds_nothing() -> None:
    # card 6 of n1 is gone (n1 now reports 4); r0 still runs on cards 3 and 6, r1 on 0-2, both end in time
    runs = [running("r0", [on("n1", gpus={3: 1000, 6: 1000})], priority=9, start=0.0, max_runtime=200.0),
            running("r1", [on("n1", gpus={0: 1000, 1: 1000, 2: 1000})], priority=9, start=0.0, max_runtime=100.0)]
    snap = loaded(runs)
    decisions = run_cycle(snap, [job("head").gpu(2).build()], runs, {}, SchedulerProfile(), 10.0)
    assert [(r.workload_id, r.start_time) for r in decisions.reservations] == [("head", 100.0)]
    for r in runs:
        for p in r.placements:
            snap.forget(p)
    assert snap.free_on(0).gpu_milli == 4000  # all of n1 free again: nothing taken twice, nothing lost
