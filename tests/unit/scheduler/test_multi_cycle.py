"""Behaviours that unfold over many cycles, each with the smallest scenario that shows it, driven by the
CycleDriver (victims stop a few cycles after being chosen and are requeued; jobs end after their duration)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tests.builders import cycle, job, node, on, queue, running
from tests.unit.scheduler.cycle_driver import CycleDriver

from gpupool.domain.queues import QueueSpec
from gpupool.domain.resources import MILLI_PER_GPU, ResourceVector
from gpupool.scheduler.profile import SchedulerProfile
from gpupool.scheduler.types import RunningWorkload

BESTFIT = SchedulerProfile(policy="bestfit")


def gpu_queue(name: str, guaranteed: float = 0, limit: float | None = None, cpu_guarantee: int = 0,
              lend: bool = True) -> QueueSpec:
    """A queue guaranteeing `guaranteed` GPUs (and `cpu_guarantee` cores when given)."""
    base = queue(name, guaranteed, limit, lend=lend)
    return QueueSpec(name, ResourceVector(cpu_guarantee * 1000, 0, base.guaranteed.gpu_milli), base.limit,
                     lend=lend)


# ------------------------------------------------------------------------------------------- reservations
@pytest.mark.parametrize("hold_after_s", [None, 600.0])
def test_a_gang_is_not_passed_for_ever_by_work_without_a_max_runtime(hold_after_s: float | None) -> None:
    # two 4-GPU nodes kept busy by 1-GPU jobs without a max_runtime (each runs 400 s), a new one every 30 s
    # until t=3,100; a 2 x 4 gang arrives at t=100. No reservation can be made (no end is known), so without
    # holds every later 1-GPU job that fits passes the gang; with them, once it has waited 600 s it holds the
    # cards it needs and starts when the jobs on them have ended (at most 400 s later)
    pool = [node(f"n{i}").gpus(4).build() for i in range(2)]
    driver = CycleDriver(pool, [queue("a")], SchedulerProfile(policy="bestfit", hold_after_s=hold_after_s))
    for k in range(8):
        driver.submit(job(f"s{k:03}").queue("a").gpu(1).build(), 400 + 20 * k, at=0)
    driver.submit(job("gang").queue("a").at(100).replicas(2, gpu=4).build(), 600, at=100)
    for k in range(8, 108):
        driver.submit(job(f"s{k:03}").queue("a").at(100 + 30 * (k - 8)).gpu(1).build(), 400, at=100 + 30 * (k - 8))
    record = driver.run_until_idle(1000)
    gang = record.start("gang")
    assert gang is not None and not record.violations
    later_starts = [t for k in range(8, 108) if (t := record.start(f"s{k:03}")) is not None]
    if hold_after_s is None:
        assert gang > max(later_starts)  # starved: it started after everything submitted behind it
    else:
        assert gang <= 100 + hold_after_s + 400 + 2 * driver.cycle_s
        assert "holding its capacity on n0, n1" in record.reasons["gang"]  # its last reason before it started


def test_a_reservation_is_kept_until_the_gang_starts() -> None:
    # two 8-GPU nodes full of 1-GPU jobs (600 s each, all declaring max_runtime, staggered ends); a stream of
    # 1-GPU jobs arrives in queue "small", one per 10 s cycle. Queue "big" also holds n3, so its share (8/24)
    # is above small's (16/24 / weight 4): small is served first in every cycle. The 2 x 8 gang of "big" is
    # promised a start by the time the last of the 16 running jobs ends, and must start by then (+ 1 cycle)
    pool = [node("n1").gpus(8).build(), node("n2").gpus(8).build(), node("n3").gpus(8).build()]
    driver = CycleDriver(pool, [queue("small", weight=4), queue("big")], BESTFIT)
    driver.add_running(running("resident", [on("n3", gpus=dict.fromkeys(range(8), 1000))], "big", start=0,
                               max_runtime=100_000))
    for i in range(16):
        start = -10.0 * i
        driver.add_running(running(f"r{i}", [on(f"n{1 + i // 8}", gpus={i % 8: 1000})], "small", start=start,
                                   max_runtime=600))
    driver.submit(job("gang").queue("big").replicas(2, gpu=8).max_runtime(3600).build(), 3600)
    for k in range(200):
        driver.submit(job(f"s{k:03}").queue("small").at(10.0 * k).gpu(1).max_runtime(600).build(), 600,
                      at=10.0 * k)
    record = driver.run(120)
    # the first cycle reserves for small's head first (1 GPU at t=450 on n2, held until 450 + 600 = 1,050), then
    # for the gang: t=1,050, when n1 and n2 are both free. Nothing else may take them meanwhile
    promise = record.first_promise["gang"]
    assert promise == 1050
    start = record.start("gang")
    assert start is not None and start <= promise + driver.cycle_s, (promise, start, record.reasons["gang"])
    assert not record.violations


def test_several_heads_hold_reservations_in_one_cycle() -> None:
    # n1 is held by a job without max_runtime, n2 by one ending at t=500. The first head (a 2 x 8 gang) can
    # never get a reservation (it needs n1); the second (8 GPUs) reserves n2 for t=500
    pool = [node("n1").gpus(8).build(), node("n2").gpus(8).build()]
    driver = CycleDriver(pool, [queue("a")], BESTFIT)
    driver.add_running(running("forever", [on("n1", gpus=dict.fromkeys(range(8), 1000))], "a", start=0))
    driver.add_running(running("bounded", [on("n2", gpus=dict.fromkeys(range(8), 1000))], "a", start=0,
                               max_runtime=500))
    driver.submit(job("gang").queue("a").at(0).replicas(2, gpu=8).build(), 100)
    driver.submit(job("eight").queue("a").at(1).gpu(8).build(), 100)
    driver.submit(job("late-small").queue("a").at(2).gpu(1).build(), 1000)
    decisions = driver.step()
    assert [(r.workload_id, r.start_time) for r in decisions.reservations] == [("eight", 500.0)]
    record = driver.run(60)
    assert record.start("eight") == 500.0  # late-small (1,000 s) never took n2 before "eight"


# --------------------------------------------------------------------------- memory-sized shares and quota
def test_memory_sized_share_does_not_loop_preempting_under_a_limit() -> None:
    # queue q (limit 1 GPU) runs "hog" (1 GPU, priority 9) and "cpu" (16 CPU, no GPU, priority 0) on the
    # only node. "p" (priority 5) asks 40 GiB of an 80 GiB card = ceil(40 / 80 * 1000) = 500 milli: q would
    # hold 1000 + 500 > 1000, so p cannot run whatever is preempted; preempting "cpu" would be useless
    pool = [node("n1").cpu(16).gpus(2, mode="shared").build()]
    limited = queue("q", limit_gpu=1)
    driver = CycleDriver(pool, [limited], BESTFIT)
    driver.add_running(running("hog", [on("n1", cpu=0, memory="0GiB", gpus={0: 1000})], "q", 9))
    cpu_job = job("cpu").queue("q").replicas(1, cpu=16, memory="1GiB").build()
    driver.add_running(running("cpu", [on("n1", cpu=16)], "q", 0), requeue_as=cpu_job)
    driver.submit(job("p").queue("q").priority(5).replicas(1, cpu=8, gpu={"memory": "40GiB"}).build(), 600)
    record = driver.run(60)
    assert record.preemptions["cpu"] == 0
    assert "limit" in record.reasons["p"]
    assert not record.violations


def test_an_idle_guarantee_is_reclaimed_for_a_memory_sized_share() -> None:
    # a guarantees 2 GPUs and is idle; b (no guarantee) borrows both cards. a's 40 GiB share (500 milli of an
    # 80 GiB card) is inside a's guarantee: one of b's jobs is preempted and a starts once it has stopped
    pool = [node("n1").gpus(2, mode="shared").build()]
    driver = CycleDriver(pool, [queue("a", 2), queue("b")], BESTFIT)
    for i in range(2):
        driver.add_running(running(f"b{i}", [on("n1", gpus={i: 1000})], "b", start=-100.0 * (i + 1)))
    driver.submit(job("share").queue("a").replicas(1, gpu={"memory": "40GiB"}).build(), 600)
    record = driver.run(10)
    assert sum(record.preemptions.values()) == 1
    assert record.start("share") is not None


def test_a_queue_without_gpu_guarantee_does_not_reclaim_with_a_memory_sized_share() -> None:
    # z guarantees CPU but no GPU; b borrows both cards (and CPU, which c's guarantee makes governed). z's
    # 40 GiB share is 500 milli of GPU beyond z's guarantee of 0: no reclaim
    pool = [node("n1").gpus(2, mode="shared").build()]
    driver = CycleDriver(pool, [gpu_queue("z", cpu_guarantee=4), gpu_queue("b")], BESTFIT)
    for i in range(2):
        driver.add_running(running(f"b{i}", [on("n1", gpus={i: 1000})], "b", start=-100.0))
    driver.submit(job("share").queue("z").replicas(1, gpu={"memory": "40GiB"}).build(), 600)
    record = driver.run(10)
    assert sum(record.preemptions.values()) == 0


def test_an_unset_cpu_guarantee_does_not_disable_gpu_reclaim() -> None:
    # c guarantees CPU, so CPU is governed; a guarantees 2 GPUs and no CPU. a's 1-GPU, 1-CPU job reclaims
    # from b, which borrows the whole node (2 GPUs over a guarantee of 0)
    pool = [node("n1").cpu(32).gpus(2).build()]
    queues = [gpu_queue("a", 2), gpu_queue("b"), gpu_queue("c", cpu_guarantee=4)]
    driver = CycleDriver(pool, queues, BESTFIT)
    for i in range(2):
        driver.add_running(running(f"b{i}", [on("n1", gpus={i: 1000})], "b", start=-100.0))
    driver.submit(job("a1").queue("a").gpu(1).build(), 600)
    record = driver.run(10)
    assert sum(record.preemptions.values()) == 1
    assert record.start("a1") is not None


# ------------------------------------------------------------------------------------------- reclaim rules
def test_reclaim_takes_from_the_biggest_borrower_and_the_smallest_victim() -> None:
    # 7 GPUs. b guarantees 3 and runs one 4-GPU job (1 over); c guarantees 0 and runs three 1-GPU jobs
    # (3 over). a (guarantee 1, idle) needs 1 GPU: c is the most over its guarantee, and one 1-GPU job of c
    # frees enough; b's 4-GPU job would push b to 0 < 3, below its own guarantee
    pool = [node("n1").gpus(7).build()]
    driver = CycleDriver(pool, [queue("a", 1), queue("b", 3), queue("c")], BESTFIT)
    driver.add_running(running("b-big", [on("n1", gpus=dict.fromkeys(range(4), 1000))], "b", start=-100))
    for i in range(3):
        driver.add_running(running(f"c{i}", [on("n1", gpus={4 + i: 1000})], "c", start=-500.0))
    driver.submit(job("a1").queue("a").gpu(1).build(), 600)
    decisions = driver.step()
    assert [p.victim_id for p in decisions.preemptions] == ["c0"]


def test_reclaim_never_pushes_a_queue_below_its_guarantee() -> None:
    # b guarantees 3 and holds 4 in one job: taking it would leave b at 0 < 3, so a waits instead
    pool = [node("n1").gpus(4).build()]
    driver = CycleDriver(pool, [queue("a", 1), queue("b", 3)], BESTFIT)
    driver.add_running(running("b-big", [on("n1", gpus=dict.fromkeys(range(4), 1000))], "b", start=-500))
    driver.submit(job("a1").queue("a").gpu(1).build(), 600)
    record = driver.run(5)
    assert sum(record.preemptions.values()) == 0


def test_reclaim_of_a_borrowed_gpu_may_free_cpu_held_at_its_guarantee() -> None:
    # 8 CPU, 32 GiB, 4 GPUs; a and b each guarantee 2 GPUs, 4 CPUs, 16 GiB. a runs four 1-GPU, 1-CPU jobs:
    # 4 GPUs (2 borrowed) and exactly its 4-CPU guarantee. b's two 1-GPU jobs reclaim two of a's: a goes to
    # 2 GPUs (its guarantee, not below) and 2 CPUs, which nobody takes from it (CPU is not what is reclaimed)
    pool = [node("n1").cpu(8).memory("32GiB").gpus(4).build()]
    guarantee = ResourceVector(4000, 16 * 1024, 2 * MILLI_PER_GPU)
    driver = CycleDriver(pool, [QueueSpec("a", guarantee), QueueSpec("b", guarantee)], BESTFIT)
    for i in range(4):
        driver.add_running(running(f"a{i}", [on("n1", gpus={i: 1000})], "a", start=-500.0 + i))
    for i in range(2):
        driver.submit(job(f"b{i}").queue("b").gpu(1, cpu=1, memory="1GiB").build(), 600)
    record = driver.run(10)
    assert sum(record.preemptions.values()) == 2
    assert record.start("b0") is not None and record.start("b1") is not None


# ------------------------------------------------------------------------------------------ limits
def test_a_queue_limit_holds_while_its_victims_stop() -> None:
    # q (limit 5 GPUs) holds 4 (low) + 1 (high) on n1; n2 has 4 free cards. p (priority 10, 2 GPUs) preempts
    # "low" to get under the limit. While "low" stops it still holds 4: "x" (2 GPUs, priority 1) must not
    # start on n2 before it has stopped (4 + 1 + 2 = 7 > 5)
    pool = [node("n1").gpus(5).build(), node("n2").gpus(4).build()]
    driver = CycleDriver(pool, [queue("q", limit_gpu=5)], BESTFIT, stop_cycles=3)
    driver.add_running(running("low", [on("n1", gpus=dict.fromkeys(range(4), 1000))], "q", 0, start=-500))
    driver.add_running(running("high", [on("n1", gpus={4: 1000})], "q", 20, start=-500))
    driver.submit(job("p").queue("q").priority(10).gpu(2).build(), 600)
    driver.submit(job("x").queue("q").priority(1).at(1).gpu(2).build(), 600)
    record = driver.run(10)
    assert record.preemptions == {"low": 1}
    assert not record.violations, record.violations
    assert max(record.peak_queue_usage["q"].gpu_milli for _ in [0]) <= 5 * MILLI_PER_GPU


def test_borrowers_do_not_take_the_quota_room_a_preemptor_waits_for() -> None:
    # 8 GPUs; no queue lends; "b" is owed 2 and uses 1. "c" holds v1 and v2; its priority-10 job p needs 4
    # GPUs: 3 are free, and the room c may borrow (8 - a's 2 - b's 2 = 4) admits p only once v1 and v2 have
    # stopped, so both are preempted. Counting the victims and p together made the pool look full, so a's
    # next job (1 GPU, a borrower) was admitted as "waiting for capacity", took the card left free and a's
    # room grew by one: once v1 and v2 had stopped, p's quota refused it and it preempted again. Now a's job
    # waits for quota until p runs, and p starts on its nominated cards as soon as its victims have stopped
    pool = [node("n1").gpus(8).build()]
    queues = [queue("a", weight=0.5, lend=False), gpu_queue("b", 2, lend=False), gpu_queue("c", lend=False)]
    driver = CycleDriver(pool, queues, SchedulerProfile(policy="bestfit", min_runtime_s=0), stop_cycles=2)
    for k, (name, queue_name, cards) in enumerate([("v1", "c", [0]), ("v2", "c", [1]), ("a1", "a", [2, 3]),
                                                   ("b1", "b", [4])]):
        driver.add_running(running(name, [on("n1", gpus=dict.fromkeys(cards, 1000))], queue_name, start=-k))
    driver.submit(job("p").queue("c").priority(10).gpu(4).build(), 600)
    driver.submit(job("a2").queue("a").gpu(1).build(), 600)  # a's share is above c's (weight 0.5): p goes first
    first = driver.step()
    assert sorted(p.victim_id for p in first.preemptions) == ["v1", "v2"]
    assert "would borrow beyond its guarantee" in driver.record.reasons["a2"]
    driver.run(4)
    assert driver.record.start("p") == 20.0  # the victims stop after two cycles: p starts in the third
    assert sum(driver.record.preemptions.values()) == 2
    assert not driver.record.violations


# ----------------------------------------------------------------------------------------------- MIG
def test_seven_mig_slices_fit_one_card_and_a_one_gpu_limit() -> None:
    pool = [node("m").mig("A100", ["1g.10gb"] * 7).build()]
    driver = CycleDriver(pool, [queue("q", limit_gpu=1)], BESTFIT)
    for i in range(7):
        driver.submit(job(f"m{i}").queue("q").at(i).replicas(1, gpu={"mig": "1g.10gb"}).build(), 600)
    decisions = driver.step()
    assert len(decisions.binds) == 7  # 7 x floor(1000 / 7) = 994 milli <= 1000
    assert not driver.record.violations


# -------------------------------------------------------------------------------------------- gangs
def test_a_mixed_role_gang_is_not_refused_when_another_order_fits() -> None:
    # n0: 24 CPU, 1 GPU; n1: 8 CPU, 2 GPUs. Chief (1 GPU, 8 CPU) first takes n1 by best fit and leaves the
    # worker (2 GPUs, 8 CPU) nowhere; worker first: worker on n1, chief on n0
    pool = [node("n0").cpu(24).gpus(1).build(), node("n1").cpu(8).gpus(2).build()]
    gang = (job("g").replicas(1, cpu=8, gpu=1, role="chief").replicas(1, cpu=8, gpu=2, role="worker").build())
    driver = CycleDriver(pool, [], BESTFIT)
    driver.submit(gang, 100)
    decisions = driver.step()
    assert [b.workload_id for b in decisions.binds] == ["g"]


# ------------------------------------------------------------------------------------- fair share
def _long_jobs(driver: CycleDriver, queue_name: str, count: int) -> None:
    for i in range(count):
        w = job(f"{queue_name}{i}").queue(queue_name).gpu(1).build()
        driver.add_running(RunningWorkload(w.id, queue_name, (on("n1", gpus={i: 1000}),), 0, -10.0 * i),
                           ends_at=4 * 3600, requeue_as=w)


def test_fair_share_preemption_rebalances_and_does_not_loop() -> None:
    # b fills 8 GPUs with 4-hour jobs; a arrives with 8 one-GPU jobs. With fair-share preemption, a gets half
    # the pool after the minimum run time: b keeps 4 (share 0.5), a gets 4 (0.5); a fifth would leave b at
    # 3/8 < a's 5/8, so it stops there, and nothing is preempted twice
    pool = [node("n1").gpus(8).build()]
    profile = SchedulerProfile(policy="bestfit", fair_share_preemption=True)
    driver = CycleDriver(pool, [queue("a"), queue("b")], profile)
    _long_jobs(driver, "b", 8)
    for i in range(8):
        driver.submit(job(f"a{i}").queue("a").at(i).gpu(1).build(), 3 * 3600)
    record = driver.run(60)
    started_a = [w for w in record.starts if w.startswith("a")]
    assert len(started_a) == 4
    assert sum(record.preemptions.values()) == 4 and max(record.preemptions.values()) == 1


@pytest.mark.parametrize(("preempted_by", "expected"), [
    (frozenset(), ["a2"]),  # the latest started of a's equal workloads goes first
    (frozenset({"a2"}), ["a1"]),  # a2 took b0's place for fair share: b0 takes the next one instead
    (frozenset({"a0", "a1", "a2"}), []),  # every candidate took its place: b0 waits
])
def test_a_workload_never_preempts_for_fair_share_one_that_did_so_to_it(preempted_by: frozenset[str],
                                                                         expected: list[str]) -> None:
    # a holds 3 of 4 GPUs (share 0.75), b one (0.25): b0 may take one of a's (a keeps 0.5 >= b's 0.5 with it)
    pool = [node("n1").gpus(4).build()]
    runs = [running(f"a{i}", [on("n1", gpus={i: 1000})], queue="a", start=100.0 * i) for i in range(3)]
    runs.append(running("b1", [on("n1", gpus={3: 1000})], queue="b", start=0.0))
    b0 = replace(job("b0").queue("b").gpu(1).build(), fair_share_preempted_by=preempted_by)
    decisions = cycle(pool, [b0], runs, [queue("a"), queue("b")], policy="bestfit", fair_share_preemption=True)
    assert [p.victim_id for p in decisions.preemptions] == expected
    assert all(p.fair_share and "fair share" in p.reason for p in decisions.preemptions)


def test_a_workload_never_takes_back_for_fair_share_what_reclaimed_from_it() -> None:
    # reclaim and fair share could swing: x (queue b) reclaims b's guarantee from y (queue a); b's other work
    # starts, b is above its guarantee again and y could take x back for fair share; b's other work ends, x
    # reclaims again. A reclaim's victim remembers its preemptor like a fair-share victim does.
    pool = [node("n1").gpus(4).build()]
    queues = [queue("a", weight=2.0), queue("b", guaranteed_gpu=2, weight=1.0)]
    runs = [running(f"y{i}", [on("n1", gpus={i: 1000})], queue="a", start=100.0 * i) for i in range(4)]
    first = cycle(pool, [job("x").queue("b").gpu(1).build()], runs, queues, policy="bestfit",
                  fair_share_preemption=True)
    assert [(p.victim_id, p.fair_share, p.across_queues) for p in first.preemptions] == [("y3", False, True)]
    # later: y3 waits (a holds y0, share 1/4 / 2), b runs x (latest started) and two more (3/4 above its 2)
    later = [running("y0", [on("n1", gpus={0: 1000})], queue="a", start=0.0),
             *[running(f"b{i}", [on("n1", gpus={i: 1000})], queue="b", start=100.0 * i) for i in (1, 2)],
             running("x", [on("n1", gpus={3: 1000})], queue="b", start=500.0)]
    y3 = job("y3").queue("a").gpu(1).build()
    forgetful = cycle(pool, [y3], later, queues, policy="bestfit", fair_share_preemption=True)
    assert [(p.victim_id, p.fair_share) for p in forgetful.preemptions] == [("x", True)]
    remembering = cycle(pool, [replace(y3, fair_share_preempted_by=frozenset({"x"}))], later, queues,
                        policy="bestfit", fair_share_preemption=True)
    assert [(p.victim_id, p.fair_share) for p in remembering.preemptions] == [("b2", True)]


def test_a_priority_preemption_inside_a_queue_is_not_remembered() -> None:
    pool = [node("n1").gpus(1).build()]
    low = running("low", [on("n1", gpus={0: 1000})], start=0.0)
    decisions = cycle(pool, [job("high").priority(5).gpu(1).build()], [low], policy="bestfit")
    assert [(p.victim_id, p.fair_share, p.across_queues) for p in decisions.preemptions] == [("low", False, False)]


def test_fair_share_preemption_is_off_by_default() -> None:
    pool = [node("n1").gpus(8).build()]
    driver = CycleDriver(pool, [queue("a"), queue("b")], BESTFIT)
    _long_jobs(driver, "b", 8)
    driver.submit(job("a0").queue("a").gpu(1).build(), 3600)
    record = driver.run(30)
    assert not record.preemptions and record.start("a0") is None


# ----------------------------------------------------------------------------------- preemption cost
def test_preemptions_per_cycle_are_capped() -> None:
    # 4 nodes x 8 cards full of priority-0 jobs; 20 priority-5 one-GPU jobs arrive. With a cap of 3, the first
    # cycle chooses 3 victims; the rest of the preemptors wait for later cycles
    pool = [node(f"n{i}").gpus(8).build() for i in range(4)]
    driver = CycleDriver(pool, [], SchedulerProfile(policy="bestfit", max_preemptions_per_cycle=3))
    for i in range(32):
        driver.add_running(running(f"r{i:02}", [on(f"n{i // 8}", gpus={i % 8: 1000})], start=-1000.0))
    for k in range(20):
        driver.submit(job(f"p{k:02}").priority(5).at(k).gpu(1).build(), 600)
    first = driver.step()
    assert len(first.preemptions) == 3
    assert all(p.reason for p in first.pending)
    driver.run(20)
    assert sum(driver.record.preemptions.values()) == 20 and not driver.record.violations


def test_a_promise_that_slips_says_why() -> None:
    # "late" declares 300 s but is still running at t=300 (the executor has not stopped it yet): the 8-GPU
    # head promised t=300 is told its new time and that "late" ran past its max_runtime
    pool = [node("n1").gpus(8).build()]
    driver = CycleDriver(pool, [queue("a")], BESTFIT)
    driver.add_running(running("late", [on("n1", gpus=dict.fromkeys(range(8), 1000))], "a", start=0,
                               max_runtime=300), ends_at=400)
    driver.submit(job("head").queue("a").gpu(8).max_runtime(600).build(), 600)
    record = driver.run(33)  # up to t=320
    assert record.first_promise["head"] == 300
    # each cycle from t=310 renews the promise to "now" (late should end any moment) and says why it moved
    assert "reserved to start by t=320 on n1 (later than the t=310 promised: late ran past its max_runtime)" \
        in record.reasons["head"]
    record = driver.run(10)
    assert record.start("head") == 400
