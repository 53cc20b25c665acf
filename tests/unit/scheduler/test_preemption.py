"""Preemption inside a queue by priority: who may be a victim, which victims (deterministically), no useless
preemption, the nominated placement, and no preemption loops over several cycles."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tests.builders import cycle, job, node, on, queue, running

from gpupool.scheduler.decisions import Decisions
from gpupool.scheduler.types import RunningWorkload

NOW = 1000.0
FOUR_GPUS = [node("n1").gpus(4).build()]


def victims(decisions: Decisions) -> list[str]:
    return [p.victim_id for p in decisions.preemptions]


def one_card_each() -> list[RunningWorkload]:
    """Four 1-card workloads at NOW = 1000 with min run time 60 s:
    r0 prio 1 ran 1000 s; r1 prio 1 ran 500 s; r2 prio 2 ran 1000 s; r3 prio 0 ran 10 s (too young)."""
    return [running("r0", [on("n1", gpus={0: 1000})], priority=1, start=0),
            running("r1", [on("n1", gpus={1: 1000})], priority=1, start=500),
            running("r2", [on("n1", gpus={2: 1000})], priority=2, start=0),
            running("r3", [on("n1", gpus={3: 1000})], priority=0, start=990)]


@pytest.mark.parametrize(("cards", "priority", "expected"), [
    # r3 is the least important but has run 10 s < 60 s. Among the rest, lowest priority first (r0, r1 at 1),
    # then the shortest run time: r1 (500 s) before r0 (1000 s)
    (1, 5, ["r1"]),
    (2, 5, ["r1", "r0"]),
    # 3 cards: r1, r0, then r2 (priority 2 < 5)
    (3, 5, ["r1", "r0", "r2"]),
    # priority 2 may only take strictly lower priorities: r1, r0
    (2, 2, ["r1", "r0"]),
    # priority 1 may take only r3, which is too young: nothing
    (1, 1, []),
    # 4 cards would need r3 as well: no preemption at all, rather than a useless one
    (4, 5, []),
])
def test_victims_by_priority_then_run_time(cards: int, priority: int, expected: list[str]) -> None:
    decisions = cycle(FOUR_GPUS, [job("p").priority(priority).gpu(cards).build()], one_card_each(), now=NOW)
    assert victims(decisions) == expected
    if expected:
        assert decisions.preemptions[0].reason == (f"preempted by higher-priority p (priority {priority} > 1) "
                                                    "in queue default")


def test_the_minimum_run_time_is_a_profile_setting() -> None:
    # with no minimum, r3 (prio 0, ran 10 s) is the first victim
    decisions = cycle(FOUR_GPUS, [job("p").priority(5).gpu(1).build()], one_card_each(), now=NOW, min_runtime_s=0)
    assert victims(decisions) == ["r3"]
    # with a 20-minute minimum, nobody has run long enough
    decisions = cycle(FOUR_GPUS, [job("p").priority(5).gpu(1).build()], one_card_each(), now=NOW, min_runtime_s=1200)
    assert victims(decisions) == []


@pytest.mark.parametrize(("cards", "priority", "expected"), [
    # priority 1 may take only r3 (prio 0), which has run 10 s of its 60: it waits 60 - 10 = 50 s more
    (1, 1, "will preempt workload r3 when its minimum run time ends in 50 s"),
    # 4 cards need all four; r3 is the only young one, its 50 s are the wait
    (4, 5, "will preempt workloads r0, r1, r2, r3 when the minimum run time of r3 ends in 50 s"),
])
def test_a_preemption_held_back_by_the_minimum_run_time_says_whom_and_when(cards: int, priority: int,
                                                                             expected: str) -> None:
    decisions = cycle(FOUR_GPUS, [job("p").priority(priority).gpu(cards).build()], one_card_each(), now=NOW)
    assert victims(decisions) == []
    assert [p.reason for p in decisions.pending] == [expected]


def test_two_young_victims_give_the_later_end() -> None:
    # both 1-card workloads are prio 0: y1 started at 995 (55 s left of 60), y2 at 970 (30 s left); p needs both
    runs = [running("y1", [on("n1", gpus={0: 1000, 1: 1000})], priority=0, start=995),
            running("y2", [on("n1", gpus={2: 1000, 3: 1000})], priority=0, start=970)]
    decisions = cycle(FOUR_GPUS, [job("p").priority(5).gpu(4).build()], runs, now=NOW)
    assert [p.reason for p in decisions.pending] == [
        "will preempt workloads y1, y2 when their minimum run times end in 55 s"]
    # without a minimum run time they are preempted now
    assert victims(cycle(FOUR_GPUS, [job("p").priority(5).gpu(4).build()], runs, now=NOW, min_runtime_s=0))


def test_non_preemptible_and_terminating_work_is_never_chosen() -> None:
    runs = [replace(r, preemptible=False) if r.id == "r1" else r for r in one_card_each()]
    runs = [replace(r, terminating=True) if r.id == "r0" else r for r in runs]
    decisions = cycle(FOUR_GPUS, [job("p").priority(5).gpu(1).build()], runs, now=NOW)
    # r1 may not be preempted, r0 is already stopping (its card will free up; it is not chosen again): r2
    assert victims(decisions) == ["r2"]


def test_the_smallest_set_that_frees_enough_after_the_reprieve() -> None:
    # small: prio 0, 1 card (0); big: prio 1, 2 cards (1, 2); card 3: a non-preemptible job. p wants 2 cards.
    runs = [running("small", [on("n1", gpus={0: 1000})], priority=0, start=100),
            running("big", [on("n1", gpus={1: 1000, 2: 1000})], priority=1, start=100),
            running("pinned", [on("n1", gpus={3: 1000})], priority=0, start=0, preemptible=False)]
    decisions = cycle(FOUR_GPUS, [job("p").priority(5).gpu(2).build()], runs, now=NOW)
    # removal in victim order: small (1 free card: not enough), big (3 free: enough). Reprieve, most important
    # first: without big only card 0 is free -> big stays a victim; without small, cards 1, 2 suffice -> small
    # is spared. Victims: {big}, and p is nominated onto cards 1, 2
    assert victims(decisions) == ["big"]
    (pending,) = decisions.pending
    assert pending.reason == "preempting 1 workload(s) (big); will start on n1 when they stop"
    assert pending.nominated is not None
    assert [(p.node, [g.index for g in p.gpus]) for p in pending.nominated] == [("n1", [1, 2])]


def test_no_preemption_when_the_preemptor_would_not_fit_afterwards() -> None:
    # every card but one belongs to non-preemptible work: freeing r0 leaves p (2 cards) still without room
    runs = [running("r0", [on("n1", gpus={0: 1000})], priority=0)]
    runs += [running(f"keep{k}", [on("n1", gpus={k: 1000})], priority=0, preemptible=False) for k in (1, 2, 3)]
    decisions = cycle(FOUR_GPUS, [job("p").priority(5).gpu(2).build()], runs, now=NOW)
    assert victims(decisions) == []
    assert decisions.pending[0].reason.startswith("0 of 1 nodes can take a replica")


def test_no_priority_preemption_across_queues() -> None:
    # a high-priority job of queue x does not preempt queue y's low-priority work (no guarantees to reclaim)
    runs = [running(f"y{k}", [on("n1", gpus={k: 1000})], queue="y", priority=0) for k in range(4)]
    decisions = cycle(FOUR_GPUS, [job("x1").queue("x").priority(100).gpu(1).build()], runs, now=NOW)
    assert victims(decisions) == []


def test_ties_are_broken_by_id() -> None:
    runs = [running(name, [on("n1", gpus={k: 1000})], priority=0, start=0) for k, name in enumerate("dcba")]
    decisions = cycle(FOUR_GPUS, [job("p").priority(1).gpu(1).build()], runs, now=NOW)
    assert victims(decisions) == ["a"]  # same priority, same run time: the smallest id


def test_work_bound_in_this_cycle_is_not_preempted_in_it() -> None:
    # cards 0-2 are held by priority-50 work. "nom" (priority 1) was nominated onto the free card 3 and binds
    # first; "hi" (priority 9) then finds no card, and the only lower-priority work is what this cycle just
    # started: it is not undone, hi waits (even with no minimum run time to protect it)
    runs = [running(f"r{k}", [on("n1", gpus={k: 1000})], priority=50) for k in range(3)]
    nom = job("nom").priority(1).gpu(1).nominated(on("n1", gpus={3: 1000})).build()
    decisions = cycle(FOUR_GPUS, [nom, job("hi").priority(9).gpu(1).build()], runs, now=NOW, min_runtime_s=0)
    assert [b.workload_id for b in decisions.binds] == ["nom"]
    assert victims(decisions) == []


def apply(runs: list[RunningWorkload], decisions: Decisions, now: float) -> list[RunningWorkload]:
    """The running set after a cycle: victims marked terminating, bound workloads added."""
    stopping = {p.victim_id for p in decisions.preemptions}
    after = [replace(r, terminating=True) if r.id in stopping else r for r in runs]
    return after + [RunningWorkload(b.workload_id, "default", b.placements, start_time=now) for b in decisions.binds]


def test_the_nominated_placement_is_held_then_bound_without_new_preemptions() -> None:
    runs = one_card_each()
    p = job("p").priority(5).gpu(2).build()
    other = job("other").priority(3).at(1).gpu(2).build()  # would happily take the freed cards

    first = cycle(FOUR_GPUS, [p, other], runs, now=NOW)
    assert victims(first) == ["r1", "r0"]
    nominated = first.pending_by_id()["p"].nominated
    assert nominated is not None and [g.index for g in nominated[0].gpus] == [0, 1]

    # cycle 2: r0 and r1 are still stopping. p preempts nobody new and its cards stay held: "other" (prio 3)
    # could only free r2's card (r3 has run 11 s), 1 card short of its 2 -> nothing happens at all
    runs = apply(runs, first, NOW)
    second = cycle(FOUR_GPUS, [replace(p, nominated=nominated), other], runs, now=NOW + 1)
    assert not second.preemptions and not second.binds
    assert second.pending_by_id()["p"].reason == "waiting for the workloads it preempted to stop"
    assert second.pending_by_id()["p"].nominated == nominated

    # cycle 3: the victims are gone; p binds exactly where it was nominated, before anyone else
    runs = [r for r in runs if not r.terminating]
    third = cycle(FOUR_GPUS, [replace(p, nominated=nominated), other], runs, now=NOW + 2)
    assert [(b.workload_id, b.placements) for b in third.binds] == [("p", nominated)]
    assert not third.preemptions


def test_a_stale_nomination_falls_back_to_normal_scheduling() -> None:
    # nominated onto card 0, but card 0 is now held by work that is not stopping: p is scheduled afresh
    runs = [running("squatter", [on("n1", gpus={0: 1000})], priority=9)]
    p = job("p").priority(5).gpu(1).nominated(on("n1", gpus={0: 1000})).build()
    decisions = cycle(FOUR_GPUS, [p], runs, now=NOW)
    assert [(b.workload_id, [g.index for g in b.placements[0].gpus]) for b in decisions.binds] == [("p", [1])]


def test_priority_preemption_also_makes_room_under_the_queue_limit() -> None:
    # a may use 3 cards and uses 3 (a0-a2, prio 0); 5 cards are free, but one more would exceed the limit:
    # hi (prio 5) preempts a0 (ties on priority and run time: smallest id) and takes its card
    runs = [running(f"a{k}", [on("n1", gpus={k: 1000})], queue="a", priority=0, start=0) for k in range(3)]
    decisions = cycle([node("n1").gpus(8).build()], [job("hi").queue("a").priority(5).gpu(1).build()], runs,
                      [queue("a", limit_gpu=3)], now=NOW)
    assert victims(decisions) == ["a0"]
    nominated = decisions.pending_by_id()["hi"].nominated
    assert nominated is not None and [g.index for g in nominated[0].gpus] == [0]
