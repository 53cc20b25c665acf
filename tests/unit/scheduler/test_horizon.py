"""`unchanged_until`: table cases for each way time enters a cycle, and a property over random pools: a
cycle run on the same inputs at any time before the horizon decides exactly what the cycle at `now` did."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest
from tests.builders import cycle, job, node, on, queue, running
from tests.unit.scheduler.test_multi_cycle_random import random_pool, random_queues, random_workload

from gpupool.domain.resources import ResourceVector
from gpupool.scheduler.decisions import Decisions
from gpupool.scheduler.horizon import unchanged_until
from gpupool.scheduler.profile import SchedulerProfile
from gpupool.scheduler.types import HeldReservation, PendingWorkload, RunningWorkload

NOW = 1000.0
POOL = [node("n1").gpus(4).build()]
FULL = [running("r", [on("n1", gpus={0: 1000, 1: 1000, 2: 1000, 3: 1000})], start=0.0)]  # all 4 GPUs, old


def horizon(pending: list[PendingWorkload], runs: list[RunningWorkload], **profile: object) -> float:
    prof = SchedulerProfile(**profile)  # type: ignore[arg-type]
    decided = cycle(POOL, pending, runs, [queue("default")], now=NOW, **profile)
    return unchanged_until(pending, runs, decided, prof, NOW, {"default": queue("default")})


def test_nothing_waiting_stands_forever() -> None:
    assert horizon([], FULL) == math.inf


def test_work_waiting_behind_old_unbounded_work_stands_until_it_may_hold() -> None:
    # r holds all 4 GPUs with no max_runtime and is past its minimum run time; w (same priority, submitted at
    # 0) waits: until it has waited hold_after_s, when it may hold r's cards; for ever without holds
    assert horizon([job("w").gpu(1).build()], FULL, hold_after_s=1800.0) == 1800.0
    assert horizon([job("w").gpu(1).build()], FULL, hold_after_s=None) == math.inf


def test_a_known_end_is_the_horizon() -> None:
    # r ends at 0 + 1500 = 1500 (max_runtime); w needs 1 GPU; backfill off, so no reservation is made
    runs = [running("r", FULL[0].placements, start=0.0, max_runtime=1500.0)]
    assert horizon([job("w").gpu(1).build()], runs, backfill=False) == 1500.0


def test_a_reservation_or_a_young_victim_means_run_again() -> None:
    runs = [running("r", FULL[0].placements, start=0.0, max_runtime=1500.0)]
    assert horizon([job("w").gpu(1).build()], runs, backfill=True) == NOW  # w holds a reservation for t=1500
    young = [running("r", FULL[0].placements, start=NOW - 10.0)]  # 10 s old, minimum run time 60 s
    assert horizon([job("w").gpu(1).priority(9).build()], young) == NOW
    assert horizon([job("w").gpu(1).priority(9).build()], young, preemption=False, hold_after_s=None) == math.inf


def test_a_young_workload_no_waiting_one_may_take_changes_nothing() -> None:
    young = [running("r", FULL[0].placements, start=NOW - 10.0, priority=5)]
    same_priority = [job("w").gpu(1).priority(5).build()]  # the same queue, not a lower priority: never a victim
    assert horizon(same_priority, young, hold_after_s=None) == math.inf
    other = [job("w").gpu(1).priority(9).queue("b").build()]  # another queue...
    queues = {"default": queue("default"), "b": queue("b")}
    decided = cycle(POOL, other, young, list(queues.values()), now=NOW)
    no_holds = SchedulerProfile(hold_after_s=None)
    assert unchanged_until(other, young, decided, no_holds, NOW, queues) == math.inf  # ...no guarantee
    queues["b"] = queue("b", guaranteed_gpu=2)  # b may reclaim its guarantee from a borrower
    decided = cycle(POOL, other, young, list(queues.values()), now=NOW)
    assert unchanged_until(other, young, decided, no_holds, NOW, queues) == NOW


def test_binds_and_held_reservations_mean_run_again() -> None:
    assert horizon([job("w").gpu(1).build()], []) == NOW  # w is bound
    held = replace(job("w").gpu(1).build(), reserved=HeldReservation(2000.0, ()))
    assert unchanged_until([held], FULL, Decisions(), SchedulerProfile(), NOW, {}) == NOW


@pytest.mark.parametrize("seed", range(80))
def test_decisions_before_the_horizon_equal_those_at_now(seed: int) -> None:
    rng = random.Random(seed)
    nodes = random_pool(rng)
    queues = random_queues(rng, sum(len(n.gpus) for n in nodes))
    if rng.random() < 0.5:  # no guarantee to reclaim: young workloads of other queues are never victims
        queues = [replace(q, guaranteed=ResourceVector()) for q in queues]
    profile = {"min_runtime_s": rng.choice([0.0, 60.0]), "backfill": rng.random() < 0.3,
               "hold_after_s": rng.choice([None, 30.0, 600.0])}
    first = [random_workload(rng, k, NOW - 500, True, (0, 5)) for k in range(40)]
    decided = cycle(nodes, first, [], queues, now=NOW - 500, **profile)
    queue_of = {w.id: w.queue for w in first}
    runs = [RunningWorkload(bind.workload_id, queue_of[bind.workload_id], bind.placements, 5,  # some of them run
                            NOW - rng.choice([5.0, 200.0, 499.0, 499.0]), rng.random() < 0.8,
                            rng.choice([None, 300.0, 1200.0])) for bind in decided.binds]
    # then a few more arrive, mostly of no higher priority (preemption, which changes the inputs, is rarer)
    pending = [random_workload(rng, 100 + k, NOW - 10, rng.random() < 0.3, (0, 0, 5, 10))
               for k in range(rng.randint(1, 6))]
    at_now = cycle(nodes, pending, runs, queues, now=NOW, **profile)
    until = unchanged_until(pending, runs, at_now, SchedulerProfile(**profile), NOW,  # type: ignore[arg-type]
                            {q.name: q for q in queues})
    for later in (NOW + 1.0, NOW + 30.0, NOW + 100.0, NOW + 700.0, NOW + 5000.0):
        if later < until:
            assert cycle(nodes, pending, runs, queues, now=later, **profile) == at_now
