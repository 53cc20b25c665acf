"""Queues: weighted DRF order, guarantees first, borrowing of idle capacity, lend=False, limits, strict FIFO that
still lends, and reclaim of borrowed capacity (only when the owner's work would then fit)."""

from __future__ import annotations

from tests.builders import cycle, job, node, on, queue, running

from gpupool.domain.queues import QueueSpec
from gpupool.domain.resources import ResourceVector
from gpupool.scheduler.decisions import Decisions
from gpupool.scheduler.queues import QuotaBook
from gpupool.scheduler.types import RunningWorkload

POOL = ResourceVector(64000, 256 * 1024, 8000)  # 64 cores, 256 GiB, 8 GPUs
FOUR_GPUS = [node("n1").gpus(4).build()]


def outcome(decisions: Decisions) -> tuple[list[str], list[tuple[str, str]], dict[str, str]]:
    """(bound ids, (victim, preemptor) pairs, pending id -> reason)."""
    return ([b.workload_id for b in decisions.binds], [(p.victim_id, p.preemptor_id) for p in decisions.preemptions],
            {p.workload_id: p.reason for p in decisions.pending})


def test_weighted_dominant_shares() -> None:
    runs = [running("ra", [on("n1", cpu=8, memory="32GiB", gpus={0: 1000, 1: 1000, 2: 1000})], queue="a"),
            running("rb", [on("n1", cpu=32, memory="16GiB", gpus={3: 1000})], queue="b")]
    book = QuotaBook({"a": queue("a"), "b": queue("b", weight=2)}, runs, POOL)
    # a: max(8/64, 32/256, 3000/8000) = max(0.125, 0.125, 0.375) = 0.375 (GPU dominates), weight 1
    # b: max(32/64, 16/256, 1000/8000) = 0.5 (CPU dominates), weight 2 -> 0.25
    assert (book.share("a"), book.share("b")) == (0.375, 0.25)
    assert book.share("nobody") == 0.0


def test_queues_take_turns_by_weighted_dominant_share() -> None:
    pool = [node("n1").cpu(64).memory("256GiB").gpus(8).build()]
    runs = [running("ra", [on("n1", gpus={0: 1000, 1: 1000, 2: 1000})], queue="a"),       # a: 3/8 = 0.375
            running("rb", [on("n1", cpu=32, gpus={3: 1000})], queue="b")]                 # b: 32/64 = 0.5
    pending = [job("a1").queue("a").gpu(4).at(5).build(), job("b1").queue("b").gpu(4).at(0).build()]
    # only 4 cards are free: the lower share (a, 0.375 < 0.5) goes first although b1 was submitted earlier
    assert outcome(cycle(pool, pending, runs, [queue("a"), queue("b")]))[0] == ["a1"]
    # b with weight 2: 0.5 / 2 = 0.25 < 0.375 -> b first
    assert outcome(cycle(pool, pending, runs, [queue("a"), queue("b", weight=2)]))[0] == ["b1"]


def test_a_head_inside_its_guarantee_goes_before_queues_that_would_borrow() -> None:
    # one card left; a uses 2 (share 2/4 = 0.5), b uses 1 (share 1/4 = 0.25)
    runs = [running("ra", [on("n1", gpus={0: 1000, 1: 1000})], queue="a"),
            running("rb", [on("n1", gpus={2: 1000})], queue="b")]
    pending = [job("a1").queue("a").gpu(1).at(5).build(), job("b1").queue("b").gpu(1).at(0).build()]
    # a guaranteed 3: a1 stays inside it (2 + 1 <= 3) while b1 would borrow -> a first despite its higher share
    bound, _, _ = outcome(cycle(FOUR_GPUS, pending, runs, [queue("a", 3), queue("b", 0)]))
    assert bound == ["a1"]
    # a guaranteed 2: both would borrow -> the lower share goes first: b
    bound, _, _ = outcome(cycle(FOUR_GPUS, pending, runs, [queue("a", 2), queue("b", 0)]))
    assert bound == ["b1"]


def test_a_queue_borrows_the_idle_guarantee_of_a_lending_queue() -> None:
    pending = [job(f"a{k}").queue("a").gpu(1).at(k).build() for k in range(4)]
    # a is guaranteed 2 of 4 cards; b's 2 are idle and lent: all four of a's jobs start
    bound, _, _ = outcome(cycle(FOUR_GPUS, pending, [], [queue("a", 2), queue("b", 2)]))
    assert bound == ["a0", "a1", "a2", "a3"]


def test_a_guarantee_that_is_not_lent_is_never_borrowed() -> None:
    pending = [job(f"a{k}").queue("a").gpu(1).at(k).build() for k in range(4)]
    bound, _, reasons = outcome(cycle(FOUR_GPUS, pending, [], [queue("a", 2), queue("b", 2, lend=False)]))
    # a may use 4 - b's 2 reserved = 2 cards; the third would make 3 > 2
    assert bound == ["a0", "a1"]
    assert reasons["a2"] == ("queue a would borrow beyond its guarantee, and the idle capacity it could borrow is "
                             "owed to other queues that do not lend: gpu 3 > available to borrow 2")


def test_limits_cap_a_queue_borrowing_included() -> None:
    pending = [job(f"a{k}").queue("a").gpu(1).at(k).build() for k in range(4)]
    bound, _, reasons = outcome(cycle(FOUR_GPUS, pending, [], [queue("a", 2, limit_gpu=3), queue("b", 2)]))
    assert bound == ["a0", "a1", "a2"]
    assert reasons == {"a3": "queue a would exceed its limit: gpu 4 > limit 3"}


def test_a_gpu_limit_does_not_cap_cpu() -> None:
    # `limit: {gpu: 3}` says nothing about CPU: a 32-core request is not refused by the limit
    spec = QueueSpec("a", limit=ResourceVector(2**53, 2**53, 3000))
    book = QuotaBook({"a": spec}, [], POOL)
    assert book.blocked_by_quota("a", ResourceVector(32000, 1024, 1000)) is None


def test_a_busy_pool_is_not_a_quota_matter() -> None:
    # b uses all 4 cards (no guarantees anywhere): a's next job waits for capacity, not for quota, so the
    # cycle can explain it by nodes and reserve for it
    book = QuotaBook({"a": queue("a"), "b": queue("b")},
                     [running("rb", [on("n1", gpus=dict.fromkeys(range(4), 1000))], queue="b")],
                     ResourceVector(64000, 256 * 1024, 4000))
    assert book.blocked_by_quota("a", ResourceVector(1000, 1024, 1000)) is None
    assert book.blocked_by_quota("b", ResourceVector(1000, 1024, 1000)) is None


def test_only_guaranteed_resources_are_borrowed() -> None:
    # guarantees name GPUs only: CPU is not governed (first come, first served), so a 1-GPU job with CPU stays
    # inside a's 2-GPU guarantee, and b, using CPU but within its GPU guarantee, is not borrowing
    runs = [running("rb", [on("n1", cpu=60, gpus={0: 1000})], queue="b")]
    book = QuotaBook({"a": queue("a", 2), "b": queue("b", 1)}, runs, POOL)
    assert book.governed == ("gpu",)
    assert book.within_guarantee("a", ResourceVector(4000, 16384, 1000))
    assert not book.is_borrowing("b")


def test_a_queue_with_pending_work_still_lends() -> None:
    # b is strict FIFO and its head is stuck (3 cards > its limit of 2); b's idle guarantee is still lent to a
    pending = [job("b-head").queue("b").gpu(3).build(), job("b-next").queue("b").gpu(1).at(1).build()]
    pending += [job(f"a{k}").queue("a").gpu(1).at(k).build() for k in range(4)]
    bound, preempted, reasons = outcome(cycle(FOUR_GPUS, pending, [], [queue("a", 2),
                                                                      queue("b", 2, limit_gpu=2, strict_fifo=True)]))
    assert bound == ["a0", "a1", "a2", "a3"] and not preempted
    assert reasons == {"b-head": "can never start under the current limit of queue b (gpu 3 > limit 2) unless the "
                                 "limit is raised",
                       "b-next": "behind b-head, the head of strict-FIFO queue b"}


def b_borrows_everything() -> list[RunningWorkload]:
    """b (guarantee 2) runs one card each: b0 prio 0 started 0, b1 prio 1 at 100, b2 prio 0 at 200, b3 prio 1 at 300."""
    return [running(f"b{k}", [on("n1", gpus={k: 1000})], queue="b", priority=k % 2, start=100 * k) for k in range(4)]


def test_reclaim_preempts_borrowers_when_the_owner_has_work_that_then_fits() -> None:
    # a (guarantee 2) uses nothing; b uses 4 with a guarantee of 2, i.e. it borrows a's 2.
    # victim order: lowest priority, then shortest run time: b2 (prio 0, started 200), b0 (0, 0), b3 (1, 300), b1
    qs = [queue("a", 2), queue("b", 2)]
    _, preempted, reasons = outcome(cycle(FOUR_GPUS, [job("a1").queue("a").gpu(1).build()], b_borrows_everything(), qs))
    assert preempted == [("b2", "a1")]
    assert reasons["a1"] == "preempting 1 workload(s) (b2); will start on n1 when they stop"
    _, preempted, _ = outcome(cycle(FOUR_GPUS, [job("a1").queue("a").gpu(2).build()], b_borrows_everything(), qs))
    assert preempted == [("b2", "a1"), ("b0", "a1")]


def test_reclaim_stops_at_the_guarantee() -> None:
    # 3 cards would take a beyond its guarantee of 2: that is borrowing, not reclaiming -> nobody is preempted
    qs = [queue("a", 2), queue("b", 2)]
    _, preempted, reasons = outcome(cycle(FOUR_GPUS, [job("a1").queue("a").gpu(3).build()], b_borrows_everything(), qs))
    assert not preempted
    assert reasons["a1"].startswith("0 of 1 nodes can take a replica")


def test_no_reclaim_when_the_owner_would_still_not_fit() -> None:
    # two nodes of 2 cards; b runs one card each and is borrowing 2. a wants 2 cards on ONE node.
    # The newest borrowers, b3 (n2) and b2 (n1), are on different nodes; once they are gone b is back at its
    # guarantee and may lose nothing more, and no node has 2 free cards -> no preemption at all
    pool = [node("n1").gpus(2).build(), node("n2").gpus(2).build()]
    runs = [running("b0", [on("n1", gpus={0: 1000})], queue="b", start=0),
            running("b1", [on("n2", gpus={0: 1000})], queue="b", start=100),
            running("b2", [on("n1", gpus={1: 1000})], queue="b", start=200),
            running("b3", [on("n2", gpus={1: 1000})], queue="b", start=300)]
    qs = [queue("a", 2), queue("b", 2)]
    _, preempted, reasons = outcome(cycle(pool, [job("a1").queue("a").gpu(2).build()], runs, qs))
    assert not preempted
    assert reasons["a1"] == ("0 of 2 nodes can take a replica (1 CPU, 1 GiB, 2 GPU): "
                             "2 with too little free GPU for 2 GPU")
    # two replicas of one card each do fit once b3 and b2 are gone
    _, preempted, _ = outcome(cycle(pool, [job("a1").queue("a").replicas(2, gpu=1).build()], runs, qs))
    assert preempted == [("b3", "a1"), ("b2", "a1")]


def test_reclaim_takes_only_from_queues_that_borrow() -> None:
    # b uses exactly its guarantee (2); c (guarantee 0) borrows 2 -> c0 is the victim (c0 and c1 tie; id decides)
    runs = [running(f"b{k}", [on("n1", gpus={k: 1000})], queue="b") for k in range(2)]
    runs += [running(f"c{k}", [on("n1", gpus={k + 2: 1000})], queue="c") for k in range(2)]
    qs = [queue("a", 2), queue("b", 2), queue("c", 0)]
    _, preempted, _ = outcome(cycle(FOUR_GPUS, [job("a1").queue("a").gpu(1).build()], runs, qs))
    assert preempted == [("c0", "a1")]
