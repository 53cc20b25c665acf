"""Backfill: the blocked head gets a reservation from the running workloads' max_runtime; later work starts only
where it does not delay it."""

from __future__ import annotations

from dataclasses import replace

from tests.builders import cycle, job, node, on, queue, running, snapshot

from gpupool.domain.nodes import Node
from gpupool.domain.queues import QueueSpec
from gpupool.scheduler.cycle import run_cycle
from gpupool.scheduler.decisions import Decisions
from gpupool.scheduler.profile import SchedulerProfile
from gpupool.scheduler.types import HeldReservation, RunningWorkload

NOW = 10.0
DELAYS_HEAD = "starting now would delay head, which holds a reservation to start by t=100"


def busy() -> list[RunningWorkload]:
    """Cards 0, 1, 2 of n1 run priority-9 work (the head cannot preempt it) started at 0 with max_runtime
    100, 200, 300 s: they end at t=100, 200, 300. The other cards of n1 are free."""
    return [running(f"r{k}", [on("n1", gpus={k: 1000})], priority=9, start=0, max_runtime=100 * (k + 1))
            for k in range(3)]


def summary(decisions: Decisions) -> tuple[list[str], list[tuple[str, float, list[tuple[str, list[int]]]]],
                                           dict[str, str]]:
    """(bound ids, reservations as (id, start, [(node, cards)]), pending id -> reason)."""
    reservations = [(r.workload_id, r.start_time, [(p.node, [g.index for g in p.gpus]) for p in r.placements])
                    for r in decisions.reservations]
    return [b.workload_id for b in decisions.binds], reservations, {p.workload_id: p.reason for p in decisions.pending}


def test_the_blocked_head_gets_the_earliest_reservation() -> None:
    decisions = cycle([node("n1").gpus(4).build()], [job("head").gpu(2).build()], busy(), now=NOW)
    bound, reservations, reasons = summary(decisions)
    # 1 card free now (3); r0 ends at 0 + 100 = 100 and frees card 0 -> 2 cards at t=100
    assert reservations == [("head", 100, [("n1", [0, 3])])]
    assert reasons["head"] == ("0 of 1 nodes can take a replica (1 CPU, 1 GiB, 2 GPU): 1 with too little free GPU "
                               "for 2 GPU; reserved to start by t=100 on n1")
    assert not bound


def test_a_later_job_that_ends_before_the_reservation_starts() -> None:
    pending = [job("head").gpu(2).build(), job("small").at(1).gpu(1).max_runtime(90).build()]
    bound, reservations, _ = summary(cycle([node("n1").gpus(4).build()], pending, busy(), now=NOW))
    # small takes reserved card 3, but ends at 10 + 90 = 100 <= 100: the head is not delayed
    assert bound == ["small"]
    assert reservations == [("head", 100, [("n1", [0, 3])])]


def test_a_later_job_that_would_delay_the_reservation_is_held_back() -> None:
    pending = [job("head").gpu(2).build(),
               job("unbounded").at(1).gpu(1).build(),                    # no max_runtime: may never end
               job("too-long").at(2).gpu(1).max_runtime(91).build()]     # 10 + 91 = 101 > 100
    bound, _, reasons = summary(cycle([node("n1").gpus(4).build()], pending, busy(), now=NOW))
    assert bound == []
    assert reasons["unbounded"] == DELAYS_HEAD
    assert reasons["too-long"] == DELAYS_HEAD


def test_a_later_job_on_capacity_the_head_does_not_need_starts() -> None:
    # n1: A100 cards 0-3 and a V100 card 4. Free now: A100 card 3 and V100 card 4. The head wants 2 A100s:
    # reserved cards 0 and 3 at t=100. A later 1-card job of any model is first offered card 3 (lowest index)
    # -- refused, it would delay the head -- then placed away from the reserved cards: card 4
    pool = [node("n1").gpus(4, "A100").gpus(1, "V100").build()]
    pending = [job("head").replicas(1, gpu={"count": 2, "model": "A100"}).build(), job("any").at(1).gpu(1).build()]
    decisions = cycle(pool, pending, busy(), now=NOW)
    bound, reservations, _ = summary(decisions)
    assert reservations == [("head", 100, [("n1", [0, 3])])]
    assert bound == ["any"]
    assert [g.index for g in decisions.bound()["any"][0].gpus] == [4]


def test_other_nodes_and_cpu_only_work_are_not_held_back() -> None:
    pool = [node("n1").gpus(4).build(), node("n2").gpus(2).build(), node("cpu").cpu(8).build()]
    runs = [*busy(), running("x", [on("n2", gpus={0: 1000})], priority=9)]
    pending = [job("head").gpu(2).build(), job("gpu-job").at(1).gpu(1).build(),
               job("cpu-job").at(2).replicas(1, cpu=4).build()]
    bound, reservations, _ = summary(cycle(pool, pending, runs, now=NOW))
    # the head needs n1's cards 0 and 3; the GPU job takes n2's free card 1, the CPU job the CPU node
    assert reservations == [("head", 100, [("n1", [0, 3])])]
    assert sorted(bound) == ["cpu-job", "gpu-job"]


def test_only_the_first_blocked_head_reserves() -> None:
    pending = [job("head").gpu(2).build(), job("second").at(1).gpu(3).build()]
    _, reservations, reasons = summary(cycle([node("n1").gpus(4).build()], pending, busy(), now=NOW))
    assert [r[0] for r in reservations] == ["head"]
    assert "reserved" not in reasons["second"]


def test_no_reservation_when_nothing_running_has_a_max_runtime() -> None:
    runs = [running(f"r{k}", [on("n1", gpus={k: 1000})], priority=9) for k in range(3)]
    pending = [job("head").gpu(2).build(), job("later").at(1).gpu(1).build()]
    bound, reservations, reasons = summary(cycle([node("n1").gpus(4).build()], pending, runs, now=NOW))
    # the running work may run forever: no reservation can be promised, and later work is not held back
    assert reservations == [] and bound == ["later"]
    assert "reserved" not in reasons["head"]


def test_terminating_work_counts_as_ending_now() -> None:
    runs = [running("stopping", [on("n1", gpus={0: 1000})], priority=9, terminating=True),
            *[running(f"r{k}", [on("n1", gpus={k: 1000})], priority=9) for k in (1, 2)]]
    _, reservations, _ = summary(cycle([node("n1").gpus(4).build()], [job("head").gpu(2).build()], runs, now=NOW))
    assert reservations == [("head", NOW, [("n1", [0, 3])])]


def test_backfill_can_be_switched_off() -> None:
    pending = [job("head").gpu(2).build(), job("unbounded").at(1).gpu(1).build()]
    bound, reservations, _ = summary(cycle([node("n1").gpus(4).build()], pending, busy(), now=NOW, backfill=False))
    assert reservations == [] and bound == ["unbounded"]


def test_a_full_pool_in_one_queue_still_reserves() -> None:
    # every card is in use by the head's own queue: a capacity matter, not a quota one -> it reserves
    runs = [*busy(), running("r3", [on("n1", gpus={3: 1000})], priority=9, start=0, max_runtime=400)]
    _, reservations, reasons = summary(cycle([node("n1").gpus(4).build()], [job("head").gpu(2).build()], runs,
                                             now=NOW))
    # r0 ends at 100 (card 0), r1 at 200 (card 1): 2 cards at t=200
    assert reservations == [("head", 200, [("n1", [0, 1])])]
    assert reasons["head"].endswith("reserved to start by t=200 on n1")


def owed_pool() -> tuple[list[Node], list[RunningWorkload], list[QueueSpec]]:
    """Two 4-card nodes. Queue `own` is guaranteed 6 GPUs and does not lend: while it runs nothing, queue
    `team` (no guarantee) may borrow at most 8 - 6 = 2 GPUs. Queue `other` (lends) runs 5 cards until t=100:
    cards 0-2 of n1 and 0-1 of n2, so no node has 4 free cards now."""
    nodes = [node("n1").gpus(4).build(), node("n2").gpus(4).build()]
    runs = [running("o1", [on("n1", gpus={0: 1000, 1: 1000, 2: 1000})], queue="other", start=0, max_runtime=100),
            running("o2", [on("n2", gpus={0: 1000, 1: 1000})], queue="other", start=0, max_runtime=100)]
    queues = [queue("own", 6, lend=False), queue("team"), queue("other")]
    return nodes, runs, queues


def test_no_reservation_for_capacity_its_queue_could_not_borrow_when_free() -> None:
    # `big` (4 cards on one node) waits for capacity: at t=100 n1 is free, but `team` could borrow only 2 GPUs
    # then (6 are owed to `own`): a reservation would come due refused and hold n1 idle meanwhile
    nodes, runs, queues = owed_pool()
    big = job("big").queue("team").replicas(1, gpu=4).max_runtime(50).build()
    bound, reservations, reasons = summary(cycle(nodes, [big], runs, queues, now=NOW))
    assert bound == [] and reservations == []
    assert reasons["big"].endswith("no reservation: at t=100 the capacity it would borrow once free is owed to other "
                                   "queues that do not lend: gpu 4 > available to borrow 2")


def test_a_due_reservation_its_quota_refuses_is_released_and_its_capacity_used() -> None:
    # `big` holds a reservation of n2's cards from an earlier cycle, due now; its queue may not take 4 GPUs (the
    # capacity it would borrow is owed): the reservation is released, and `own`'s job, which would have delayed
    # it (no max_runtime), starts on n2 instead of waiting behind a reservation that cannot start
    nodes, _, queues = owed_pool()
    runs = [running("o1", [on("n1", gpus={0: 1000, 1: 1000, 2: 1000})], queue="other", start=0, max_runtime=100)]
    big = replace(job("big").queue("team").replicas(1, gpu=4).max_runtime(50).build(),
                  reserved=HeldReservation(NOW, (on("n2", gpus=dict.fromkeys(range(4), 1000)),)))
    later = job("later").queue("own").at(1).replicas(1, gpu=4).build()  # no max_runtime: would delay big
    bound, reservations, reasons = summary(cycle(nodes, [big, later], runs, queues, now=NOW))
    assert reservations == [] and bound == ["later"]
    assert "no reservation: at t=100 the capacity it would borrow once free is owed" in reasons["big"]


# ------------------------------------------------------------------------------------------------ holds
def two_busy_nodes() -> list[RunningWorkload]:
    """Work without a max_runtime: all 4 cards of n1 (started at 0-3) and 3 of n2's 4 (started at 500-502)."""
    return ([running(f"a{k}", [on("n1", gpus={k: 1000})], start=k) for k in range(4)]
            + [running(f"b{k}", [on("n2", gpus={k: 1000})], start=500 + k) for k in range(3)])


def test_a_head_that_waited_past_hold_after_s_holds_the_cards_it_needs() -> None:
    pool = [node("n1").gpus(4).build(), node("n2").gpus(4).build()]
    pending = [job("head").at(0).gpu(4).build(), job("later").at(5).gpu(1).build()]
    # before hold_after_s the head gets nothing (no end to count on) and later work takes n2's free card
    bound, reservations, reasons = summary(cycle(pool, pending, two_busy_nodes(), now=1000.0, hold_after_s=1800))
    assert bound == ["later"] and reservations == [] and "holding" not in reasons["head"]
    # past it, the head holds n2 (its work started last) and later work may not start on n2's free card
    decisions = cycle(pool, pending, two_busy_nodes(), now=2000.0, hold_after_s=1800)
    bound, reservations, reasons = summary(decisions)
    assert bound == [] and reservations == [("head", 2000.0, [("n2", [0, 1, 2, 3])])]
    assert decisions.reservations[0].hold
    assert "holding its capacity on n2: it has waited over 1800 s for work without a max_runtime" in reasons["head"]
    assert reasons["later"] == "starting now would take capacity held for head, which has waited long"
    # without holds, the head waits behind later work for as long as there is later work
    bound, reservations, _ = summary(cycle(pool, pending, two_busy_nodes(), now=2000.0, hold_after_s=None))
    assert bound == ["later"] and reservations == []


def test_a_hold_keeps_its_cards_across_cycles_and_other_nodes_stay_open() -> None:
    pool = [node("n1").gpus(4).build(), node("n2").gpus(4).build(), node("n3").gpus(1).build()]
    runs = two_busy_nodes()
    held = HeldReservation(1990.0, (on("n2", gpus=dict.fromkeys(range(4), 1000)),), hold=True)
    head = replace(job("head").at(0).gpu(4).build(), reserved=held)
    # n1's work is now the youngest: a new hold would take n1; the kept one stays on n2. n3 is free for later
    runs = [replace(r, start_time=1900.0 + k) if r.id.startswith("a") else r for k, r in enumerate(runs)]
    pending = [head, job("later").at(5).gpu(1).build(), job("third").at(6).gpu(1).build()]
    decisions = cycle(pool, pending, runs, now=2000.0, hold_after_s=1800)
    bound, reservations, reasons = summary(decisions)
    assert reservations == [("head", 1990.0, [("n2", [0, 1, 2, 3])])] and decisions.reservations[0].hold
    assert bound == ["later"] and [p.node for b in decisions.binds for p in b.placements] == ["n3"]
    assert "holding its capacity on n2" in reasons["head"] and "held for head" in reasons["third"]
    # once the work on n2 has ended the head starts there
    rest = [r for r in runs if r.id.startswith("a")]
    bound, _, _ = summary(cycle(pool, [head], rest, now=2010.0, hold_after_s=1800))
    assert bound == ["head"]


def test_one_hold_at_a_time_the_first_starving_head_in_order() -> None:
    # two heads waited past hold_after_s in two queues: the first in the cycle's order holds n2; the other
    # gets no hold while that one lasts (each hold leaves cards idle while they drain)
    pool = [node("n1").gpus(4).build(), node("n2").gpus(4).build()]
    pending = [job("first").queue("a").at(0).gpu(4).build(), job("second").queue("b").at(1).gpu(4).build()]
    decisions = cycle(pool, pending, two_busy_nodes(), [queue("a"), queue("b")], now=2000.0, hold_after_s=1800)
    _, reservations, reasons = summary(decisions)
    assert reservations == [("first", 2000.0, [("n2", [0, 1, 2, 3])])]
    assert "holding" not in reasons["second"]


def test_a_held_head_preempts_once_its_victims_are_old_enough() -> None:
    # priority-9 head behind four young priority-0 jobs without a max_runtime: the first cycle it holds n1 (and
    # says whom it will preempt); once they have run their minimum run time it preempts them
    pool = [node("n1").gpus(4).build()]
    runs = [running(f"r{k}", [on("n1", gpus={k: 1000})], start=1990.0) for k in range(4)]
    head = job("head").priority(9).at(0).gpu(4).build()
    first = cycle(pool, [head], runs, now=2000.0, hold_after_s=1800)
    assert [r.hold for r in first.reservations] == [True] and not first.preemptions
    held = HeldReservation(first.reservations[0].start_time, first.reservations[0].placements, hold=True)
    second = cycle(pool, [replace(head, reserved=held)], runs, now=2100.0, hold_after_s=1800)
    assert sorted(p.victim_id for p in second.preemptions) == ["r0", "r1", "r2", "r3"]


def test_a_hold_gives_way_to_a_reservation_once_a_start_can_be_promised() -> None:
    # the head held n2 behind a service; n1 now runs work that declares its end: the head is reserved n1 at
    # that end instead of waiting on n2 for good
    pool = [node("n1").gpus(4).build(), node("n2").gpus(4).build()]
    runs = [running("svc", [on("n2", gpus={0: 1000, 1: 1000, 2: 1000})], start=500.0)]
    runs += [running(f"s{k}", [on("n1", gpus={k: 1000})], start=1900.0 + k, max_runtime=600) for k in range(4)]
    held = HeldReservation(1900.0, (on("n2", gpus=dict.fromkeys(range(4), 1000)),), hold=True)
    head = replace(job("head").at(0).gpu(4).build(), reserved=held)
    decisions = cycle(pool, [head], runs, now=2000.0, hold_after_s=1800)
    assert [(r.start_time, r.hold, r.placements[0].node) for r in decisions.reservations] == [(2503.0, False, "n1")]
    assert decisions.pending[0].reason.endswith("; reserved to start by t=2503 on n1")  # not "later than promised"


def test_heads_that_wait_behind_a_hold_leave_reservations_to_others() -> None:
    # ten 4-GPU heads past hold_after_s: the first holds n1; the others cost no reservation try, and a 2-GPU
    # workload behind them is still reserved n2's cards that free at t=3000 (reservation_depth 2)
    pool = [node("n1").gpus(4).build(), node("n2").gpus(4).build()]
    runs = ([running(f"u{k}", [on("n1", gpus={k: 1000})], start=500.0 + k) for k in range(3)]
            + [running(f"v{k}", [on("n2", gpus={k: 1000})], start=500.0 + k) for k in range(2)]
            + [running(f"b{k}", [on("n2", gpus={k: 1000})], start=0.0, max_runtime=3000.0) for k in (2, 3)])
    pending = [job(f"s{k}").at(k).gpu(4).build() for k in range(10)]
    pending.append(job("two").at(1500.0).gpu(2).max_runtime(100).build())
    _, reservations, _ = summary(cycle(pool, pending, runs, now=2000.0, hold_after_s=1800, reservation_depth=2))
    assert [(r[0], r[1]) for r in reservations] == [("s0", 2000.0), ("two", 3000.0)]


def test_a_placement_on_a_node_that_left_does_not_break_a_hold() -> None:
    # the server leaves placements on nodes it no longer knows out of the snapshot, not out of the running work
    runs = [running("r0", [on("n1", gpus={0: 1000, 1: 1000, 2: 1000}), on("gone", gpus={0: 1000})], start=500.0)]
    snap = snapshot([node("n1").gpus(4).build()], [])
    snap.assume_all([p for p in runs[0].placements if p.node == "n1"], force=True)
    decisions = run_cycle(snap, [job("head").at(0).gpu(4).build()], runs, {}, SchedulerProfile(hold_after_s=1800),
                          2000.0)
    assert [(r.workload_id, r.hold) for r in decisions.reservations] == [("head", True)]
