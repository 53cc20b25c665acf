"""Random multi-cycle scenarios checked against what must hold at all times and over the whole run:
no node, card or queue limit exceeded at any time (stopping work included), gangs all or nothing, no queue
reclaimed below its guarantee, a bounded number of preemptions per workload (no loops), and reservations
honoured: a reserved head starts no later than its first promise when all work declares max_runtime."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from tests.builders import JobBuilder, job, node, queue
from tests.unit.scheduler.cycle_driver import CycleDriver, NodeEvent, Record

from gpupool.domain.nodes import Node
from gpupool.domain.queues import QueueSpec
from gpupool.scheduler.profile import SchedulerProfile
from gpupool.scheduler.types import PendingWorkload

QUEUES = ("a", "b", "c")
# a workload can be preempted legitimately each time a more important one arrives or is requeued; a loop
# (victim stops, rebinds, is preempted again for the same reason) reaches dozens in 600 cycles with a 60 s
# minimum run time. The driver also flags the loop signatures themselves: a preemptor that preempts again
# before it has started, and two workloads preempting each other.
MAX_PREEMPTIONS_PER_WORKLOAD = 10


def random_pool(rng: random.Random) -> list[Node]:
    nodes = []
    for i in range(rng.randint(2, 4)):
        b = node(f"n{i}").cpu(rng.choice([32, 64])).memory("256GiB")
        b = b.gpus(rng.choice([4, 8]), mode=rng.choice(["exclusive", "exclusive", "shared"]))
        nodes.append(b.build())
    return nodes


def random_queues(rng: random.Random, total_gpus: int) -> list[QueueSpec]:
    specs = []
    left = total_gpus
    for name in QUEUES:
        guaranteed = rng.randint(0, min(4, left))
        left -= guaranteed
        limit = rng.choice([None, guaranteed + rng.randint(2, 8)])
        specs.append(queue(name, guaranteed, limit, weight=rng.choice([1.0, 2.0]), lend=rng.random() < 0.8))
    return specs


def random_workload(rng: random.Random, k: int, at: float, bounded: bool,
                    priorities: tuple[int, ...]) -> PendingWorkload:
    b = job(f"w{k:03}").queue(rng.choice(QUEUES)).priority(rng.choice(priorities)).at(at)
    shape = rng.random()
    if shape < 0.45:
        b = b.gpu(1)
    elif shape < 0.6:
        b = b.gpu(2)
    elif shape < 0.72:
        b = b.replicas(1, gpu=0.5)
    elif shape < 0.82:
        b = b.replicas(1, gpu={"memory": "20GiB"})
    elif shape < 0.92:
        b = b.replicas(2, gpu=2)
    else:
        b = b.replicas(1, cpu=4)
    if bounded or rng.random() < 0.5:
        b = b.max_runtime(rng.choice([300, 900, 1800]))
    return b.build()


def scenario(seed: int, *, bounded: bool, preemption: bool, priorities: tuple[int, ...]) -> CycleDriver:
    rng = random.Random(seed)
    pool = random_pool(rng)
    total = sum(len(n.gpus) for n in pool)
    profile = SchedulerProfile(policy=rng.choice(["bestfit", "binpack", "fgd"]), preemption=preemption,
                               fair_share_preemption=preemption and rng.random() < 0.5, min_runtime_s=60,
                               max_preemptions_per_cycle=rng.choice([2, 64]), reservation_depth=rng.choice([1, 8]))
    driver = CycleDriver(pool, random_queues(rng, total), profile, cycle_s=10, stop_cycles=rng.randint(1, 3))
    for k in range(rng.randint(25, 45)):
        at = rng.uniform(0, 1500)
        w = random_workload(rng, k, at, bounded, priorities)
        limit = w.max_runtime_s or 3000.0
        driver.submit(w, rng.uniform(50, limit), at=at)
    return driver


def overloaded_scenario(seed: int) -> CycleDriver:
    """A second family, made apart from the first: 4-12 nodes, 2-5 queues (guarantees, weights 1-4, some limits,
    some not lending), work arriving in 5-15 bursts of 1-20 alike workloads (one queue, priority and shape each:
    1 GPU, a share, 4 or a node's GPUs, gangs of 2-3 x 4-8 GPUs across nodes, memory-sized shares, CPU only),
    a tenth not preemptible, half without a max_runtime; min run time 0-120 s, victims stopping in 1-5 cycles.
    Pools stay overloaded for hours."""
    rng = random.Random(seed)
    nodes = [node(f"n{i:02}").cpu(rng.choice([64, 128])).memory("512GiB")
             .gpus(rng.choice([4, 8, 8]), mode=rng.choice(["exclusive"] * 3 + ["shared"])).build()
             for i in range(rng.randint(4, 12))]
    total, widest = sum(len(n.gpus) for n in nodes), max(len(n.gpus) for n in nodes)
    queues, left = [], total
    for i in range(rng.randint(2, 5)):
        guaranteed = rng.randint(0, max(0, left // 2))
        left -= guaranteed
        limit = rng.choice([None, None, guaranteed + rng.randint(4, 16)])
        queues.append(queue(f"q{i}", guaranteed, limit, weight=rng.choice([1.0, 1.0, 2.0, 4.0]),
                            lend=rng.random() < 0.8))
    profile = SchedulerProfile(policy=rng.choice(["bestfit", "binpack", "fgd", "spread"]),
                               fair_share_preemption=rng.random() < 0.5, min_runtime_s=rng.choice([0, 30, 120]),
                               max_preemptions_per_cycle=rng.choice([4, 64]), reservation_depth=rng.choice([1, 4, 8]))
    driver = CycleDriver(nodes, queues, profile, cycle_s=10, stop_cycles=rng.randint(1, 5))
    k = 0
    for _ in range(rng.randint(5, 15)):
        at, spec = rng.uniform(0, 3000), rng.choice(queues)
        priority, shape, count = rng.choice([0, 0, 0, 5, 10]), rng.random(), rng.randint(1, 20)
        preemptible, runtime = rng.random() < 0.9, rng.choice([300, 900, 1800])
        bounded = rng.random() < 0.5
        for _ in range(count):
            b = job(f"w{k:03}").queue(spec.name).priority(priority).at(at + rng.uniform(0, 30))
            b = _overloaded_shape(b, shape, rng, widest)
            b = b if preemptible else b.not_preemptible()
            w = (b.max_runtime(runtime) if bounded else b).build()
            if spec.limit is not None and w.nominal().gpu_milli > spec.limit.gpu_milli:
                continue  # could never start in its queue
            driver.submit(w, rng.uniform(30, runtime), at=w.submit_time)
            k += 1
    return driver


def churn_scenario(seed: int) -> CycleDriver:
    """A third family: the first family's work (priorities, preemption, fair share) on 3-6 nodes that do not
    stay put: 2-5 events, each a node that leaves and comes back 100-1,500 s later, a node that comes back with
    half its cards, or a cordon lifted later; the work on a node that left is reported running 0-3 more
    cycles, then lost and requeued. Every node is back, whole and uncordoned, before t=4,500 s."""
    rng = random.Random(seed)
    pool = [node(f"n{i}").cpu(64).memory("256GiB").gpus(rng.choice([4, 8]),
                                                         mode=rng.choice(["exclusive", "exclusive", "shared"])).build()
            for i in range(rng.randint(3, 6))]
    profile = SchedulerProfile(policy=rng.choice(["bestfit", "binpack", "fgd"]), min_runtime_s=60,
                               fair_share_preemption=rng.random() < 0.5, reservation_depth=rng.choice([1, 8]),
                               hold_after_s=rng.choice([None, 600.0]))
    driver = CycleDriver(pool, random_queues(rng, sum(len(n.gpus) for n in pool)), profile, cycle_s=10,
                         stop_cycles=rng.randint(1, 3))
    for _ in range(rng.randint(2, 5)):
        n, at, kind = rng.choice(pool), rng.uniform(100, 2500), rng.random()
        back = at + rng.uniform(100, 1500)
        if kind < 0.5:
            driver.node_event(NodeEvent(at, "leave", n.name, lost_after=rng.randint(0, 3)))
        elif kind < 0.75:
            half = replace(n, gpus=n.gpus[:len(n.gpus) // 2])
            driver.node_event(NodeEvent(at, "join", n.name, node=half, lost_after=rng.randint(0, 3)))
        else:
            driver.node_event(NodeEvent(at, "cordon", n.name))
            driver.node_event(NodeEvent(back, "uncordon", n.name))
            continue
        driver.node_event(NodeEvent(back, "join", n.name, node=n))
    for k in range(rng.randint(25, 45)):
        at = rng.uniform(0, 2500)
        w = random_workload(rng, k, at, False, (0, 0, 5, 10))
        driver.submit(w, rng.uniform(50, w.max_runtime_s or 3000.0), at=at)
    return driver


MIXED_GPUS: tuple[object, ...] = (1, 2, 4, 8, 0.5, 0.25, {"memory": "20GiB"}, {"mig": "1g.10gb"},
                                  {"mig": "3g.40gb"}, {"count": 2, "model": "H100"}, {"count": 1, "memory": "40GiB"})


def mixed_scenario(seed: int) -> CycleDriver:
    """A fourth family: 1-5 nodes of mixed kinds (MIG cards, A100 / H100 of 40 or 80 GiB in exclusive, shared or
    MPS mode, CPU only; racks, a zone label, a taint, a cordon), two queues, 10-40 workloads asking for any of
    MIXED_GPUS, some with a parameter-server role, a node selector, a toleration or a minimum of replicas, and
    0-4 node events as in `churn_scenario`; gang topology on or off, any policy."""
    rng = random.Random(seed)
    pool = []
    for i in range(rng.randint(1, 5)):
        b = node(f"n{i}").cpu(rng.choice([8, 64])).memory("256GiB").rack(rng.choice(["r1", "r2"]))
        if rng.random() < 0.25:
            b = b.mig("A100", rng.choice([["1g.10gb"] * 7, ["3g.40gb"] * 2, ["1g.10gb", "3g.40gb"]]))
        if rng.random() < 0.8:
            b = b.gpus(rng.choice([1, 2, 4, 8]), model=rng.choice(["A100", "H100"]),
                       memory=rng.choice(["40GiB", "80GiB"]), mode=rng.choice(["exclusive", "shared", "mps"]))
        b = b.label("zone", rng.choice(["a", "b"])) if rng.random() < 0.2 else b
        b = b.taint("special") if rng.random() < 0.15 else b
        pool.append((b.cordoned() if rng.random() < 0.1 else b).build())
    queues = []
    for name in ("a", "b"):
        guaranteed = rng.randint(0, 3)
        queues.append(queue(name, guaranteed, rng.choice([None, guaranteed + 4]), weight=rng.choice([1.0, 2.0]),
                            lend=rng.random() < 0.8))
    profile = SchedulerProfile(policy=rng.choice(["bestfit", "binpack", "fgd", "spread"]), min_runtime_s=60,
                               fair_share_preemption=rng.random() < 0.5, hold_after_s=rng.choice([None, 300.0]),
                               reservation_depth=rng.choice([1, 4]), gang_topology=rng.random() < 0.5)
    driver = CycleDriver(pool, queues, profile, cycle_s=10, stop_cycles=rng.randint(1, 3))
    for _ in range(rng.randint(0, 4)):
        n, at = rng.choice(pool), rng.uniform(100, 2000)
        if rng.random() < 0.5:
            driver.node_event(NodeEvent(at, "leave", n.name, lost_after=rng.randint(0, 3)))
        else:
            driver.node_event(NodeEvent(at, "join", n.name, node=replace(n, gpus=n.gpus[:len(n.gpus) // 2]),
                                        lost_after=rng.randint(0, 3)))
        driver.node_event(NodeEvent(at + rng.uniform(100, 1000), "join", n.name, node=n))
    for k in range(rng.randint(10, 40)):
        at = rng.uniform(0, 2000)
        driver.submit(_mixed_workload(rng, k, at), rng.uniform(30, 2000), at=at)
    return driver


def _mixed_workload(rng: random.Random, k: int, at: float) -> PendingWorkload:
    b = job(f"w{k:03}").queue(rng.choice(["a", "b"])).priority(rng.choice([0, 0, 5, 10])).at(at)
    count, extra = rng.choice([1, 1, 1, 2, 3]), {}
    if rng.random() < 0.15:
        extra["node_selector"] = (("zone", rng.choice(["a", "b"])),)
    if rng.random() < 0.1:
        extra["tolerations"] = ("special",)
    b = b.replicas(count, gpu=rng.choice(MIXED_GPUS), **extra)
    b = b.replicas(1, cpu=2, role="ps") if rng.random() < 0.2 else b
    b = b.min_available(rng.randint(1, count)) if count > 1 and rng.random() < 0.3 else b
    b = b.not_preemptible() if rng.random() < 0.1 else b
    return (b.max_runtime(rng.choice([300, 1800])) if rng.random() < 0.5 else b).build()


def _overloaded_shape(b: JobBuilder, shape: float, rng: random.Random, widest: int) -> JobBuilder:
    if shape < 0.35:
        return b.gpu(1)
    if shape < 0.5:
        return b.replicas(1, gpu=rng.choice([0.25, 0.5]))
    if shape < 0.62:
        return b.gpu(min(4, widest))
    if shape < 0.72:
        return b.gpu(widest)
    if shape < 0.85:
        return b.replicas(rng.randint(2, 3), gpu=min(widest, rng.choice([4, 8])))
    if shape < 0.92:
        return b.replicas(1, gpu={"memory": "20GiB"})
    return b.replicas(1, cpu=8)


@pytest.mark.slow
# seed 127: a preemptor whose quota room a borrower took while its victims stopped preempted again; seed 379
# did so within one queue when only the other queues' stopping work was counted as gone
# (benchmarks/scheduler/README.md, "Preemptors and borrowers"); in seeds 399, 748, 913 and 949 two workloads of
# different queues took turns at preempting each other for fair share as the shares moved ("A workload does
# not preempt back for fair share")
@pytest.mark.parametrize("seed", [*range(6), 127, 379, 399, 748, 913, 949])
def test_random_scenarios_keep_every_invariant(seed: int) -> None:
    driver = scenario(seed, bounded=False, preemption=True, priorities=(0, 0, 5, 10))
    record = driver.run_until_idle(max_cycles=600)
    assert not record.violations, record.violations[:5]
    assert max(record.preemptions.values(), default=0) <= MAX_PREEMPTIONS_PER_WORKLOAD, record.preemptions
    assert all(len(times) <= MAX_PREEMPTIONS_PER_WORKLOAD + 1 for times in record.starts.values())


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_reservations_are_honoured_when_all_work_declares_max_runtime(seed: int) -> None:
    # one priority and no preemption: nothing may take a reserved head's capacity, so the first promise holds
    # (a start is observed at the first cycle at or after the promised time: one cycle of slack)
    # Quota is not capacity: a reservation promises capacity, and a head whose queue's quota refuses it when its
    # time comes (the idle capacity it would borrow is owed to a queue that does not lend) has its reservation
    # released, with the quota's reason; only such heads may start later than promised
    driver = scenario(1000 + seed, bounded=True, preemption=False, priorities=(0,))
    record = driver.run_until_idle(max_cycles=600)
    assert not record.violations, record.violations[:5]
    late = {w: (promise, record.start(w)) for w, promise in record.first_promise.items()
            if (start := record.start(w)) is None or start > promise + driver.cycle_s}
    excused = {w for w in late if record.due_reasons.get(w, "").startswith(f"queue {driver.templates[w].queue} would")}
    assert not late.keys() - excused, (late, {w: record.due_reasons.get(w) for w in late})


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_overloaded_scenarios_keep_every_invariant_and_start_all_that_can(seed: int) -> None:
    driver = overloaded_scenario(seed)
    arrivals = [a.workload.id for a in driver.arrivals]
    record = driver.run_until_idle(max_cycles=3000)
    assert not (pending := [w for w in arrivals if record.start(w) is None
                            and not record.reasons.get(w, "").startswith("can never run")
                            and "owed to other queues that do not lend" not in record.reasons.get(w, "")]), pending
    assert max(record.preemptions.values(), default=0) <= MAX_PREEMPTIONS_PER_WORKLOAD, record.preemptions
    assert not record.violations, record.violations[:5]


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_nodes_that_leave_shrink_and_are_cordoned_break_nothing(seed: int) -> None:
    record = _run_keeping_invariants(churn_scenario(seed), max_cycles=1500)
    assert sum(record.lost.values()) > 0 or seed == 1  # seed 1: its nodes leave when nothing runs there
    assert max(record.preemptions.values(), default=0) <= MAX_PREEMPTIONS_PER_WORKLOAD, record.preemptions


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_mixed_pools_and_requests_keep_every_invariant(seed: int) -> None:
    _run_keeping_invariants(mixed_scenario(seed), max_cycles=800)


def _run_keeping_invariants(driver: CycleDriver, max_cycles: int) -> Record:
    """Run `driver` until idle and check that no invariant broke and that all work that could run finished."""
    arrivals = [a.workload.id for a in driver.arrivals]
    record = driver.run_until_idle(max_cycles=max_cycles)
    assert not record.violations, record.violations[:5]
    assert not (never := _unfinished(record, arrivals)), never
    return record


def _unfinished(record: Record, arrivals: list[str]) -> list[str]:
    """The arrivals that never finished although they could run."""
    return [w for w in arrivals if w not in record.finished and not record.reasons.get(w, "").startswith("can never")
            and "owed to other queues that do not lend" not in record.reasons.get(w, "")]
