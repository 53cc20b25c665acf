"""Determinism: the same inputs give identical decisions, whatever the order of pending, running and nodes."""

from __future__ import annotations

import random
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from tests.builders import cycle, job, node, on, queue, running, snapshot
from tests.scheduler_strategies import NOW, Scenario, scenarios

from gpupool.domain.nodes import Node
from gpupool.domain.queues import QueueSpec
from gpupool.scheduler.cycle import run_cycle
from gpupool.scheduler.decisions import Decisions
from gpupool.scheduler.placement.registry import policy_names
from gpupool.scheduler.profile import SchedulerProfile
from gpupool.scheduler.types import PendingWorkload, RunningWorkload

T = TypeVar("T")


def decide(nodes: list[Node], pending: list[PendingWorkload], runs: list[RunningWorkload],
           queues: dict[str, QueueSpec], profile: SchedulerProfile) -> Decisions:
    return run_cycle(snapshot(nodes, runs), pending, runs, queues, profile, NOW)


def shuffled(rng: random.Random, items: list[T]) -> list[T]:
    copy = list(items)
    rng.shuffle(copy)
    return copy


def busy_pool() -> tuple[list[Node], list[PendingWorkload], list[RunningWorkload], dict[str, QueueSpec]]:
    """Two queues on three nodes with work that binds, preempts, reserves and waits in one cycle."""
    nodes = [node("n1").gpus(4, nvlink=[0, 0, 1, 1]).rack("r1").build(),
             node("n2").gpus(2, mode="shared").rack("r1").build(),
             node("n3").gpus(4, "V100").rack("r2").build(), node("cpu").cpu(16).build()]
    runs = [running("low", [on("n1", gpus={0: 1000})], queue="a", priority=0, start=0),
            running("b-big", [on("n3", gpus=dict.fromkeys(range(4), 1000))], queue="b", start=0, max_runtime=1500),
            running("share", [on("n2", gpus={0: 400})], queue="b", start=500, max_runtime=900),
            running("b-n1", [on("n1", gpus={1: 1000, 2: 1000})], queue="b", priority=5, start=0, max_runtime=3000)]
    pending = [job("urgent").queue("a").priority(9).gpu(2).build(),
               job("gang").queue("b").replicas(3, gpu=1).at(1).build(),
               job("halves").queue("b").replicas(2, gpu=0.5).at(2).build(),
               job("v100s").queue("a").replicas(1, gpu={"count": 4, "model": "V100"}).at(3).build(),
               job("cpu-work").queue("a").replicas(2, cpu=4).at(4).build(),
               job("never").queue("b").gpu(9).at(5).build()]
    return nodes, pending, runs, {"a": queue("a", 4), "b": queue("b", 2)}


def test_the_busy_pool_exercises_every_kind_of_decision() -> None:
    nodes, pending, runs, queues = busy_pool()
    decisions = decide(nodes, pending, runs, queues, SchedulerProfile(policy="bestfit"))
    assert decisions.binds and decisions.preemptions and decisions.reservations and decisions.pending


@pytest.mark.parametrize("policy", policy_names())
def test_same_inputs_same_decisions_in_any_input_order(policy: str) -> None:
    nodes, pending, runs, queues = busy_pool()
    profile = SchedulerProfile(policy=policy)
    first = decide(nodes, pending, runs, queues, profile)
    assert decide(nodes, pending, runs, queues, profile) == first
    rng = random.Random(0)
    for _ in range(5):
        n, p, r = shuffled(rng, nodes), shuffled(rng, pending), shuffled(rng, runs)
        assert decide(n, p, r, dict(reversed(list(queues.items()))), profile) == first


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_scenarios_decide_the_same_in_any_input_order(s: Scenario) -> None:
    first = decide(s.nodes, s.pending, s.running, s.queues, s.profile)
    rng = random.Random(len(s.pending))
    n, p, r = shuffled(rng, s.nodes), shuffled(rng, s.pending), shuffled(rng, s.running)
    assert decide(n, p, r, s.queues, s.profile) == first


def test_workloads_submitted_together_are_served_in_the_numeric_order_of_their_ids() -> None:
    # The tasks of a job array share one submit time; the store's ids are integers as text. With one free GPU,
    # task 9999 (submitted first) binds and 10130 waits first in line; text order alone would reverse them.
    nodes = [node("n1").gpus(1).build()]
    pending = [job(workload_id).gpu(1).at(5.0).build() for workload_id in ("10130", "9999", "10131")]
    decisions = cycle(nodes, pending)
    assert [b.workload_id for b in decisions.binds] == ["9999"]
    assert [(p.workload_id, p.position) for p in decisions.pending] == [("10130", 1), ("10131", 2)]
