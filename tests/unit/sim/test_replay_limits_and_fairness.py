"""Replay semantics shared with the server (max_runtime is enforced) and fairness over the contended window."""

from __future__ import annotations

import pytest
from tests.builders import node, request

from gpupool.domain.queues import QueueSpec
from gpupool.scheduler.profile import SchedulerProfile
from gpupool.sim.engine import ReplayConfig, ReplayEngine
from gpupool.sim.metrics import summarise
from gpupool.sim.workloads import SimWorkload


def _run(nodes: list, workloads: list[SimWorkload], queues: dict | None = None, **config: float):
    profile = SchedulerProfile(policy="bestfit", min_runtime_s=0)
    return ReplayEngine(nodes, workloads, ReplayConfig(profile, queues or {}, **config)).run()  # type: ignore[arg-type]


def test_a_workload_is_stopped_and_failed_at_its_max_runtime() -> None:
    nodes = [node("n").gpus(2).build()]
    workloads = [SimWorkload("long", 0.0, 3000.0, request(gpu=2), max_runtime_s=600.0),
                 SimWorkload("next", 10.0, 100.0, request(gpu=2), max_runtime_s=600.0)]
    result = _run(nodes, workloads)
    # long declares 600 s but would run 3000: stopped at 600 (failed, as the server's reconciler does);
    # next, reserved for t=600 from that very max_runtime, starts then and ends at 700 (within its limit).
    assert result.outcomes["long"].end == 600.0
    assert result.outcomes["long"].failed == "ran longer than its max_runtime (600s); stopped"
    assert (result.outcomes["next"].first_start, result.outcomes["next"].end) == (600.0, 700.0)
    assert result.outcomes["next"].failed is None
    summary = summarise(result, {})
    assert (summary["completed"], summary["stopped_at_max_runtime"]) == (1, 1)


def test_duration_scale_scales_max_runtime_too() -> None:
    nodes = [node("n").gpus(1).build()]
    workloads = [SimWorkload("a", 0.0, 3000.0, request(gpu=1), max_runtime_s=600.0)]
    # both divided by 10: runs 300 s (not 60 s of a 600 s limit read unscaled, nor 300 s past a 60 s limit)
    result = _run(nodes, workloads, duration_scale=10.0)
    assert result.outcomes["a"].end == 60.0
    assert result.outcomes["a"].failed is not None


def test_fairness_is_measured_while_queues_contend_not_over_the_makespan() -> None:
    nodes = [node("n").gpus(3).build()]
    queues = {"a": QueueSpec("a", weight=2.0), "b": QueueSpec("b", weight=1.0)}
    workloads = [SimWorkload(f"{q}{i}", 0.0, 100.0, request(gpu=1), queue=q) for q in "ab" for i in range(30)]
    result = _run(nodes, workloads, queues)
    summary = summarise(result, queues)
    shares = summary["queues"]
    # weighted DRF with weights 2:1 on 3 cards: a holds 2, b holds 1 while both wait. a's 30 jobs run two
    # at a time, the last two start at t = 14 * 100 = 1400: nothing of a waits after that. The contended
    # window is [0, 1400), where a has 2/3 of the GPU in use and b 1/3.
    assert summary["contended_s"] == pytest.approx(1400.0)
    assert shares["a"]["share"] == pytest.approx(2 / 3)
    assert shares["b"]["share"] == pytest.approx(1 / 3)
    # share / weight is 1/3 for both: Jain's index 1. Over the whole run each queue did 3000 GPU-s of
    # 3 x makespan: the pool share reads equal, which says nothing about the 2:1 split.
    assert summary["jain_fairness"] == pytest.approx(1.0)
    assert shares["a"]["pool_share"] == pytest.approx(shares["b"]["pool_share"])


def test_a_starved_queue_shows_as_unfair() -> None:
    nodes = [node("n").gpus(2).build()]
    queues = {"a": QueueSpec("a"), "b": QueueSpec("b")}
    # a's two long jobs take both cards first; b waits 1000 s with nothing: a 100 % of the GPU in use while
    # both wait -> ratios (1, 0) -> Jain 0.5.
    workloads = [SimWorkload("a1", 0.0, 1000.0, request(gpu=1), queue="a"),
                 SimWorkload("a2", 0.0, 1000.0, request(gpu=1), queue="a"),
                 SimWorkload("a3", 0.0, 1000.0, request(gpu=1), queue="a"),
                 SimWorkload("b1", 1.0, 10.0, request(gpu=1), queue="b")]
    summary = summarise(_run(nodes, workloads, queues), queues)
    assert summary["contended_s"] == pytest.approx(999.0)
    assert summary["queues"]["b"]["share"] == 0.0
    assert summary["jain_fairness"] == pytest.approx(0.5)
