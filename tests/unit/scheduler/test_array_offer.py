"""An uncapped job array's tasks are offered to a cycle only up to what the pool could hold at once
(`pool_task_bound`) plus the reservation depth plus one: on random pools, with random running and waiting
work and preemption and backfill on, one cycle decides exactly the same with that prefix of the tasks as with
all of them."""

from __future__ import annotations

import random

from tests.builders import cycle, job, node, running

from gpupool.domain.arrays import pool_task_bound
from gpupool.domain.nodes import Node
from gpupool.scheduler.decisions import Decisions
from gpupool.scheduler.profile import SchedulerProfile
from gpupool.scheduler.types import PendingWorkload

TRIALS = 80  # random pools per run: enough that many cut the array short and several preempt; a second or two


def test_a_cycle_decides_the_same_with_the_bounded_prefix_of_an_array() -> None:
    draw = random.Random(4242)
    cut = preempted = 0
    for trial in range(TRIALS):
        nodes = [_random_node(draw, k) for k in range(draw.randint(1, 4))]
        runs, others = _background(draw, nodes)
        tasks = _array(draw, draw.randint(5, 80))
        bound = pool_task_bound(nodes, [(g.count, g.request) for g in tasks[0].groups])
        assert bound is not None
        offered = tasks[: bound + SchedulerProfile().reservation_depth + 1]  # as the scheduling loop offers
        full = cycle(nodes, [*others, *tasks], runs, now=1000.0)
        lazy = cycle(nodes, [*others, *offered], runs, now=1000.0)
        assert _decided(full) == _decided(lazy), f"trial {trial}: bound {bound} of {len(tasks)} tasks"
        kept = {t.id for t in offered} | {o.id for o in others}
        assert {p.workload_id: p.reason for p in full.pending if p.workload_id in kept} == {
            p.workload_id: p.reason for p in lazy.pending
        }, f"trial {trial}"
        cut += len(offered) < len(tasks)
        preempted += bool(full.preemptions)
    assert cut >= TRIALS // 3 and preempted >= 3, (cut, preempted)  # the property was exercised


def test_the_bound_counts_whole_nodes_and_refuses_none() -> None:
    nodes = [node("a").cpu(8).memory("32GiB").gpus(4).build(), node("b").cpu(4).memory("8GiB").build()]
    assert pool_task_bound(nodes, [(1, job("x").gpu(1, cpu=1).build().groups[0].request)]) == 4  # GPUs
    assert pool_task_bound(nodes, [(1, job("x").replicas(1, cpu=2).build().groups[0].request)]) == 6  # CPU
    assert pool_task_bound(nodes, [(2, job("x").replicas(1, cpu=2).build().groups[0].request)]) == 3  # 2 each
    assert pool_task_bound(nodes, [(1, job("x").replicas(1, memory="16GiB").build().groups[0].request)]) == 2
    assert pool_task_bound(nodes, [(1, job("x").gpu(0.25, cpu=0.1, memory="1MiB").build().groups[0].request)]) == 16
    nothing = job("x").replicas(1, cpu=0, memory="0MiB").build().groups[0].request
    assert pool_task_bound(nodes, [(1, nothing)]) is None  # bounded by nothing: every task is offered


def _random_node(draw: random.Random, k: int) -> Node:
    return node(f"n{k}").cpu(draw.choice([2, 4, 8, 16])).memory(f"{draw.choice([4, 16, 64])}GiB").gpus(
        draw.choice([0, 1, 2, 4, 8])).build()


def _background(draw: random.Random, nodes: list[Node]) -> tuple[list, list[PendingWorkload]]:
    """Running work (what a first cycle placed of some random jobs) and other jobs still waiting."""
    first = [_random_job(draw, f"r{k:03d}", float(k)) for k in range(draw.randint(0, 8))]
    placed = cycle(nodes, first, now=100.0)
    priorities = {j.id: j.priority for j in first}
    runs = [running(b.workload_id, list(b.placements), priority=priorities[b.workload_id], start=100.0,
                    max_runtime=draw.choice([None, 600.0])) for b in placed.binds]
    others = [_random_job(draw, f"w{k:03d}", 200.0 + draw.choice([-1, 1]) * draw.random() * 100) for k in
              range(draw.randint(0, 5))]
    return runs, others


def _random_job(draw: random.Random, workload_id: str, at: float) -> PendingWorkload:
    built = job(workload_id).priority(draw.choice([0, 10, 100])).at(at)
    built = built.replicas(draw.randint(1, 2), cpu=draw.choice([0.5, 1, 2]), memory=draw.choice(["1GiB", "4GiB"]),
                           gpu=draw.choice([0, 0, 1, 2, 0.5]))
    if draw.random() < 0.3:
        built = built.max_runtime(draw.choice([50.0, 500.0]))
    return built.build()


def _array(draw: random.Random, count: int) -> list[PendingWorkload]:
    """`count` identical tasks submitted together, in index order (as the store hands them over)."""
    priority, replicas = draw.choice([0, 10, 100]), draw.choice([1, 1, 2])
    cpu, memory, gpu = draw.choice([0.5, 1, 2]), draw.choice(["512MiB", "2GiB"]), draw.choice([0, 1, 1, 0.5, 2])
    runtime = draw.choice([None, 100.0])
    tasks = []
    for index in range(count):
        built = job(f"t{index:05d}").priority(priority).at(200.0).replicas(replicas, cpu=cpu, memory=memory, gpu=gpu)
        tasks.append((built.max_runtime(runtime) if runtime else built).build())
    return tasks


def _decided(decisions: Decisions) -> tuple[object, ...]:
    return (decisions.binds, decisions.preemptions, decisions.reservations)
