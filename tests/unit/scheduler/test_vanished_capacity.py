"""Running work on capacity the snapshot no longer has (a node that left the pool, a card its node no longer
reports) holds nothing in the snapshot and breaks no cycle: reservations, holds and preemption look past it.

A driver may drop a node from the pool while the work on it is still reported running for a few cycles (it is
declared lost later); a cycle must not fail meanwhile.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from tests.builders import job, node, on, queue, running

from gpupool.domain.queues import QueueSpec
from gpupool.scheduler.cycle import run_cycle
from gpupool.scheduler.profile import SchedulerProfile
from gpupool.scheduler.snapshot import ClusterSnapshot
from gpupool.scheduler.types import HeldReservation, PendingWorkload, ReplicaPlacement, RunningWorkload


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


def _odd_placement(rng: random.Random, names: list[str]) -> ReplicaPlacement:
    """A placement on any node, "gone" included, on any card 0-9 (most nodes have fewer)."""
    cards = {rng.randint(0, 9): rng.choice([250, 1000])} if rng.random() < 0.7 else None
    return on(rng.choice(names), cpu=rng.choice([0, 1, 8]), gpus=cards)


def _odd_cycle(seed: int) -> tuple[ClusterSnapshot, list[PendingWorkload], list[RunningWorkload], list[QueueSpec],
                                   SchedulerProfile]:
    """0-4 nodes (some cordoned, some without cards), running work, nominations and reservations naming nodes and
    cards that are gone, workloads of a queue nobody configured."""
    rng = random.Random(seed)
    nodes = [replace(node(f"n{i}").cpu(rng.choice([4, 32])).memory("64GiB")
                     .gpus(rng.choice([0, 1, 4, 8]), mode=rng.choice(["exclusive", "shared", "mps"])).build(),
                     schedulable=rng.random() < 0.8) for i in range(rng.randint(0, 4))]
    names = [n.name for n in nodes] + ["gone"]
    queues = []
    for name in ("a", "b"):
        guaranteed = rng.randint(0, 4)
        queues.append(queue(name, guaranteed, rng.choice([None, guaranteed, guaranteed + 2]), lend=rng.random() < 0.5))
    runs = [running(f"r{k}", [_odd_placement(rng, names) for _ in range(rng.randint(0, 2))],
                    queue=rng.choice(["a", "b", "unset"]), priority=rng.choice([0, 5]), start=rng.uniform(-5000, 100),
                    max_runtime=rng.choice([None, 50.0, 5000.0]), terminating=rng.random() < 0.2,
                    preemptible=rng.random() < 0.8) for k in range(rng.randint(0, 6))]
    pending = []
    for k in range(rng.randint(0, 6)):
        b = job(f"p{k}").queue(rng.choice(["a", "b", "unset"])).priority(rng.choice([0, 5, 10]))
        b = b.at(rng.uniform(-5000, 100))
        b = b.replicas(rng.randint(1, 3), gpu=rng.choice([0.5, 1, 2, 8])) if rng.random() < 0.8 else \
            b.replicas(1, cpu=2)
        w = (b.max_runtime(rng.choice([10, 1000])) if rng.random() < 0.5 else b).build()
        if rng.random() < 0.3:
            w = replace(w, nominated=(_odd_placement(rng, names),))
        if rng.random() < 0.3:
            w = replace(w, reserved=HeldReservation(rng.uniform(0, 2000), (_odd_placement(rng, names),),
                                                    rng.random() < 0.5))
        pending.append(w)
    snap = ClusterSnapshot(nodes)
    for r in runs:
        snap.assume_all(r.placements, force=True)
    profile = SchedulerProfile(policy=rng.choice(["bestfit", "binpack", "fgd", "spread"]),
                               fair_share_preemption=rng.random() < 0.5, hold_after_s=rng.choice([None, 0.0, 100.0]),
                               reservation_depth=rng.choice([1, 4]))
    return snap, pending, runs, queues, profile


@pytest.mark.parametrize("first", range(0, 600, 100))
def test_claims_on_capacity_that_is_gone_never_fail_a_cycle_or_place_work_there(first: int) -> None:
    for seed in range(first, first + 100):
        snap, pending, runs, queues, profile = _odd_cycle(seed)
        decisions = run_cycle(snap, pending, runs, {q.name: q for q in queues}, profile, 100.0)
        usable = {n.name for n in snap.nodes if n.schedulable}
        placed = [p for b in decisions.binds for p in b.placements]
        assert all(p.node in usable for p in placed), (seed, placed)
        stopping = {p.victim_id for p in decisions.preemptions}
        for r in runs:  # what the binds take must be free once the victims and the terminating work are gone
            if r.id in stopping or r.terminating:
                for p in r.placements:
                    snap.forget(p)
        snap.trial(placed)  # raises OverCommitError when the binds over-commit a node or card
