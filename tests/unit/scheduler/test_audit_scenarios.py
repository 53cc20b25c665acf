"""Multi-cycle scenarios found by randomised audits of the scheduler's guarantees, each shrunk to the smallest
pool and workload that shows it, plus a few seeded random generators that keep guarding those guarantees."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from tests.builders import cycle, job, node, on, running
from tests.unit.scheduler.cycle_driver import CycleDriver

from gpupool.domain.nodes import Node
from gpupool.domain.queues import UNLIMITED, QueueSpec
from gpupool.domain.resources import MILLI_PER_GPU, ResourceVector
from gpupool.scheduler.decisions import Decisions
from gpupool.scheduler.exact_fit import gang_fits_exactly
from gpupool.scheduler.feasibility import NeverFitsChecker
from gpupool.scheduler.placement.resource_fit import BestFitPolicy
from gpupool.scheduler.placer import Placer
from gpupool.scheduler.profile import SchedulerProfile
from gpupool.scheduler.snapshot import ClusterSnapshot
from gpupool.scheduler.types import HeldReservation, PendingWorkload

BESTFIT = SchedulerProfile(policy="bestfit")


def test_a_slipped_reservation_starts_when_a_later_promise_follows_it() -> None:
    # one card; r declares 100 s but runs 150 s. w1 is promised the card at t=100 and w2 after w1 (t=400).
    # r's overrun makes w1 start late, so it ends after w2's promised start: w1 must still start (its own
    # promise came first and w2's was made behind it), not wait while both promises slip for ever
    pool = [node("n1").gpus(1).build()]
    driver = CycleDriver(pool, profile=BESTFIT)
    driver.add_running(running("r", [on("n1", gpus={0: 1000})], max_runtime=100), ends_at=150)
    for wid in ("w1", "w2"):
        driver.submit(job(wid).gpu(1).max_runtime(300).build(), 300)
    record = driver.run(120)
    assert not record.violations, record.violations[:3]
    assert record.start("w1") == 150
    assert record.start("w2") == 450


def test_reclaim_does_not_take_gpus_from_a_queue_at_its_gpu_guarantee_that_borrows_cpu() -> None:
    # 4 GPUs, 32 CPUs; a guarantees 2 GPUs and 8 CPUs (so CPU is governed), c guarantees 2 GPUs and no CPU.
    # c runs two 1-GPU, 10-CPU jobs: exactly its GPU guarantee, and 20 CPUs it is not guaranteed (the largest
    # share over a guarantee). b (no guarantee) borrows 2 GPUs. a's 1-GPU job reclaims from b: taking a job of
    # c would push c below its GPU guarantee, whatever c borrows in CPU
    pool = [node("n1").cpu(32).gpus(4).build()]
    queues = [QueueSpec("a", ResourceVector(8000, 0, 2 * MILLI_PER_GPU)),
              QueueSpec("c", ResourceVector(0, 0, 2 * MILLI_PER_GPU)), QueueSpec("b")]
    driver = CycleDriver(pool, queues, BESTFIT)
    for i in range(2):
        driver.add_running(running(f"c{i}", [on("n1", cpu=10, gpus={i: 1000})], "c", start=-500.0))
        driver.add_running(running(f"b{i}", [on("n1", cpu=1, gpus={2 + i: 1000})], "b", start=-500.0))
    driver.submit(job("a1").queue("a").gpu(1).build(), 600)
    decisions = driver.step()
    assert [p.victim_id for p in decisions.preemptions] == ["b0"]
    record = driver.run(10)
    assert not record.violations, record.violations[:3]
    assert record.start("a1") is not None


def test_fair_share_does_not_take_gpus_from_a_queue_below_its_gpu_guarantee() -> None:
    # 4 GPUs, 8 CPUs. a guarantees 3 GPUs and runs two 1-GPU, 3.5-CPU jobs: below its GPU guarantee, but
    # above d's fair share through its CPU. d's 1-GPU, 2-CPU job does not fit (1 CPU free); fair share would
    # take a job of a (a's share 3.5/8 >= d's 2/8 after), which would push a further below its guarantee
    pool = [node("n1").cpu(8).gpus(4).build()]
    queues = [QueueSpec("a", ResourceVector(0, 0, 3 * MILLI_PER_GPU)), QueueSpec("d")]
    profile = SchedulerProfile(policy="bestfit", fair_share_preemption=True)
    driver = CycleDriver(pool, queues, profile)
    for i in range(2):
        driver.add_running(running(f"a{i}", [on("n1", cpu=3.5, gpus={i: 1000})], "a", start=-500.0))
    driver.submit(job("d1").queue("d").gpu(1, cpu=2).build(), 600)
    record = driver.run(10)
    assert not record.violations, record.violations[:3]
    assert sum(record.preemptions.values()) == 0


def test_a_gang_that_fits_only_by_careful_packing_is_not_refused_as_never_runnable() -> None:
    # two shared cards; 2 x 0.4 + 4 x 0.3 fits as 0.4 + 0.3 + 0.3 on each card, but greedy best fit (in
    # either order of the roles) strands capacity; six 0.4 shares really can never run there
    checker = NeverFitsChecker([node("n1").gpus(2, mode="shared").build()])
    packed = job("packed").replicas(2, gpu=0.4, role="chief").replicas(4, gpu=0.3).build()
    assert checker.reason(packed) is None
    assert gang_fits_exactly(ClusterSnapshot([node("n1").gpus(2, mode="shared").build()]), packed) is True
    too_many = job("too-many").replicas(6, gpu=0.4).build()
    assert (checker.reason(too_many) or "").startswith("can never run: the gang of 6")


def test_a_late_head_does_not_take_the_capacity_promised_to_a_later_reservation() -> None:
    # n1 and n2 with one card each. a was promised n1 at t=100, but unbounded work r1 holds n1 now; b was
    # promised n2 at t=500 (when r2 ends). a's new promise must come after b's (n2 at t=600), not take n2 at
    # t=500 from b
    pool = [node("n1").gpus(1).build(), node("n2").gpus(1).build()]
    runs = [running("r1", [on("n1", gpus={0: 1000})], start=50),
            running("r2", [on("n2", gpus={0: 1000})], start=0, max_runtime=500)]
    a = replace(job("a").gpu(1).max_runtime(100).build(), reserved=HeldReservation(100, (on("n1", gpus={0: 1000}),)))
    b = replace(job("b").gpu(1).max_runtime(100).at(1).build(),
                reserved=HeldReservation(500, (on("n2", gpus={0: 1000}),)))
    decisions = cycle(pool, [a, b], runs, now=110, policy="bestfit")
    assert {r.workload_id: r.start_time for r in decisions.reservations} == {"a": 600, "b": 500}
    assert "later than the t=100 promised" in decisions.pending_by_id()["a"].reason



def test_a_gang_with_min_available_is_not_refused_for_a_role_it_can_start_without() -> None:
    # the largest node has one card: the 2-GPU chief never fits, but min_available 2 lets the two 1-GPU
    # workers start without it; with min_available 3 the chief is needed and the gang can never run
    pool = [node("n1").gpus(1).build(), node("n2").gpus(1).build()]
    gang = job("g").replicas(1, gpu=2, role="chief").replicas(2, gpu=1).min_available(2).build()
    assert NeverFitsChecker(pool).reason(gang) is None
    decisions = cycle(pool, [gang], policy="bestfit")
    assert [len(b.placements) for b in decisions.binds] == [2]
    whole = replace(gang, min_available=3)
    assert (NeverFitsChecker(pool).reason(whole) or "").startswith("can never run: a replica asks for 2 GPUs")


def test_two_heads_are_not_promised_the_same_mig_instance() -> None:
    # one MIG instance, held by r until t=100; w1 and w2 each need it for 100 s. w2's promise must come
    # after w1's run (t=200): w1's claim and r's stop on the same instance must not cancel out in the future
    pool = [node("n1").mig("A100", ["1g.10gb"]).build()]
    mig = {"mig": "1g.10gb"}
    runs = [running("r", [on("n1", gpus={0: 142})], start=0, max_runtime=100)]
    runs = [replace(runs[0], placements=(replace(runs[0].placements[0], gpus=(
        replace(runs[0].placements[0].gpus[0], mig_instance=0),)),))]
    pending = [job(w).replicas(1, gpu=mig).max_runtime(100).at(k).build() for k, w in enumerate(("w1", "w2"))]
    decisions = cycle(pool, pending, runs, now=10, policy="bestfit")
    assert {r.workload_id: r.start_time for r in decisions.reservations} == {"w1": 100, "w2": 200}

# ------------------------------------------------------------------------------------ random generators
# Pools of mixed cards (models, shared and MPS cards, MIG layouts, CPU-only nodes), queues guaranteeing GPU and
# sometimes CPU and memory, and workloads of every request kind: whole cards naming models, shares by milli and
# by memory, MIG instances, gangs of a chief and workers, min_available, arrays of equal jobs, CPU-only work.
MODELS = (("A100", "80GiB"), ("V100", "32GiB"), ("T4", "16GiB"))
MIG_LAYOUTS = (["1g.10gb"] * 7, ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"], ["4g.40gb", "2g.20gb", "1g.10gb"])
POLICIES = ("bestfit", "binpack", "spread", "fgd")


def mixed_pool(rng: random.Random, count: int) -> list[Node]:
    nodes = []
    for i in range(count):
        b = node(f"n{i}").cpu(rng.choice([16, 32, 64])).memory(rng.choice(["128GiB", "256GiB"]))
        kind = rng.random()
        if kind < 0.2:
            b = b.mig("A100", rng.choice(MIG_LAYOUTS)).gpus(rng.choice([0, 1]), "A100", "80GiB", "shared")
        elif kind < 0.9:
            model, memory = rng.choice(MODELS)
            b = b.gpus(rng.choice([2, 4, 8]), model, memory, rng.choice(["exclusive", "exclusive", "shared", "mps"]))
        nodes.append(b.build())
    return nodes


def mixed_queues(rng: random.Random, nodes: list[Node], names: tuple[str, ...]) -> list[QueueSpec]:
    gpus, cpu = sum(len(n.gpus) for n in nodes), sum(n.cpu_milli for n in nodes)
    governed_cpu = rng.random() < 0.4
    left, specs = gpus, []
    for name in names:
        g = rng.randint(0, max(0, min(left, gpus // len(names) + 1)))
        left -= g
        cpu_g = rng.choice([0, cpu // (2 * len(names))]) if governed_cpu else 0
        limit = None
        if rng.random() < 0.4:
            limit = ResourceVector(UNLIMITED, UNLIMITED, (g + rng.randint(1, 6)) * MILLI_PER_GPU)
        specs.append(QueueSpec(name, ResourceVector(cpu_g, 0, g * MILLI_PER_GPU), limit, rng.choice([0.5, 1.0, 2.0]),
                               rng.random() < 0.75))
    return specs


def mixed_workload(rng: random.Random, wid: str, names: tuple[str, ...], at: float, bounded: bool,
                   priorities: tuple[int, ...]) -> PendingWorkload:
    b = job(wid).queue(rng.choice(names)).priority(rng.choice(priorities)).at(at)
    models = rng.choice([None, None, ["A100"], ["V100", "T4"]])
    cpu, memory = rng.choice([1, 2, 4, 8]), rng.choice(["4GiB", "16GiB", "32GiB"])

    def cards(count: int) -> object:
        return {"count": count, "model": models} if models else count

    shape = rng.random()
    if shape < 0.3:
        b = b.replicas(1, cpu=cpu, memory=memory, gpu=cards(rng.choice([1, 1, 2, 4])))
    elif shape < 0.42:
        b = b.replicas(1, cpu=cpu, memory=memory, gpu=rng.choice([0.25, 0.5, "300m"]))
    elif shape < 0.54:
        b = b.replicas(rng.choice([1, 2]), cpu=cpu, memory=memory, gpu={"memory": rng.choice(["10GiB", "40GiB"])})
    elif shape < 0.64:
        b = b.replicas(rng.choice([1, 2]), cpu=cpu, memory=memory,
                       gpu={"mig": rng.choice(["1g.10gb", "2g.20gb", "3g.40gb"]), "count": rng.choice([1, 2])})
    elif shape < 0.82:
        b = b.replicas(1, cpu=cpu, memory=memory, gpu=cards(rng.choice([1, 2])), role="chief")
        b = b.replicas(rng.randint(1, 4), cpu=rng.choice([1, 4]), memory="8GiB", gpu=cards(rng.choice([1, 2])))
        if rng.random() < 0.2:
            b = b.min_available(rng.randint(1, sum(g.count for g in b.groups)))
    else:
        b = b.replicas(rng.choice([1, 2]), cpu=cpu, memory=memory)
    if rng.random() < 0.1:
        b = b.not_preemptible()
    if bounded or rng.random() < 0.6:
        b = b.max_runtime(rng.choice([120, 300, 900]))
    return b.build()


def mixed_scenario(seed: int, *, bounded: bool = False, preemption: bool = True,
                   priorities: tuple[int, ...] = (0, 0, 5, 10)) -> CycleDriver:
    rng = random.Random(seed)
    nodes = mixed_pool(rng, rng.randint(4, 10))
    names = ("a", "b", "c", "d")[:rng.randint(2, 4)]
    profile = SchedulerProfile(policy=rng.choice(POLICIES), preemption=preemption,
                               fair_share_preemption=preemption and rng.random() < 0.5,
                               min_runtime_s=rng.choice([0, 30, 60]), max_preemptions_per_cycle=rng.choice([1, 2, 64]),
                               reservation_depth=rng.choice([1, 2, 8]), gang_topology=rng.random() < 0.8)
    driver = CycleDriver(nodes, mixed_queues(rng, nodes, names), profile, cycle_s=10, stop_cycles=rng.randint(0, 5))
    k = 0
    while k < 30:
        at = round(rng.uniform(0, 600), 1)
        w = mixed_workload(rng, str(100 + k), names, at, bounded, priorities)
        for r in range(rng.choice([1, 1, 1, 1, 3])):  # arrays: equal jobs submitted together
            task = replace(w, id=str(100 + k)) if r else w
            limit = task.max_runtime_s or 900.0
            driver.submit(task, rng.uniform(20, limit) if rng.random() < 0.8 else limit + 100, at=at)
            k += 1
    return driver


def _could_ever_start(driver: CycleDriver, workload_id: str, checker: NeverFitsChecker) -> bool:
    reason = driver.record.reasons.get(workload_id, "")
    return checker.reason(driver.pending[workload_id]) is None and "unless the limit is raised" not in reason


@pytest.mark.parametrize("seed", range(4))
def test_mixed_hardware_scenarios_keep_every_invariant_and_starve_nothing(seed: int) -> None:
    driver = mixed_scenario(seed)
    caps = []
    for _ in range(300):
        if not (driver.pending or driver.running or driver.arrivals):
            break
        caps.append(len(driver.step().preemptions))
    record = driver.record
    assert not record.violations, record.violations[:3]
    assert max(caps) <= driver.profile.max_preemptions_per_cycle
    assert max(record.preemptions.values(), default=0) <= 6, record.preemptions
    checker = NeverFitsChecker(driver.nodes)
    stuck = {w: record.reasons.get(w) for w in driver.pending if _could_ever_start(driver, w, checker)}
    assert not stuck, stuck


@pytest.mark.parametrize("seed", range(3))
def test_mixed_hardware_reservations_are_honoured_when_all_work_declares_max_runtime(seed: int) -> None:
    driver = mixed_scenario(200 + seed, bounded=True, preemption=False, priorities=(0,))
    record = driver.run_until_idle(max_cycles=300)
    assert not record.violations, record.violations[:3]
    late = {w: (promise, record.start(w), record.reasons.get(w)) for w, promise in record.first_promise.items()
            if (start := record.start(w)) is None or start > promise + driver.cycle_s}
    assert not late, late


@pytest.mark.parametrize("seed", range(2))
def test_mixed_hardware_scenarios_decide_the_same_when_run_again(seed: int) -> None:
    def decisions(driver: CycleDriver) -> list[Decisions]:
        return [driver.step() for _ in range(60)]

    assert decisions(mixed_scenario(300 + seed)) == decisions(mixed_scenario(300 + seed))


@pytest.mark.parametrize("seed", range(40))
def test_can_never_run_holds_for_every_assignment_on_small_pools(seed: int) -> None:
    # the checker's answer against the exact search, and the exact search against the greedy placer: a gang
    # the placer fits is never refuted, and "can never run" only when the search proves nothing fits
    rng = random.Random(400 + seed)
    nodes = mixed_pool(rng, rng.randint(1, 3))
    checker = NeverFitsChecker(nodes)
    for k in range(10):
        w = mixed_workload(rng, str(k), ("a",), 0, False, (0,))
        exact = gang_fits_exactly(ClusterSnapshot(nodes), w, max_trials=100_000)
        greedy = Placer(BestFitPolicy(), avoid_gpu_nodes=False).place_gang(ClusterSnapshot(nodes), w, explain=False)
        assert exact is not None
        assert exact or not greedy.ok
        assert (checker.reason(w) is not None) == (not exact), (w, checker.reason(w))
