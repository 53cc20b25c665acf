"""Trace replay on a virtual clock: queueing delays worked by hand, backfill, preemption, metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.builders import request

from gpupool.domain.queues import QueueSpec
from gpupool.domain.resources import ResourceVector
from gpupool.scheduler.profile import SchedulerProfile
from gpupool.sim.engine import ReplayConfig, ReplayEngine
from gpupool.sim.metrics import jain_index, summarise, time_weighted_mean
from gpupool.sim.traces.generic import load_workloads
from gpupool.sim.traces.openb import load_nodes
from gpupool.sim.workloads import SimWorkload

FIXTURES = Path(__file__).parent / "fixtures"


def _replay(trace: str, **profile: object):
    nodes = load_nodes(FIXTURES / "one_node.csv")  # one node, 2 cards
    config = ReplayConfig(SchedulerProfile(policy="bestfit", **profile))  # type: ignore[arg-type]
    return ReplayEngine(nodes, load_workloads(FIXTURES / trace), config).run()


def test_queueing_delays_worked_by_hand() -> None:
    result = _replay("replay.csv")
    # t=0 a takes both cards; b (t=10) and c (t=20) wait. t=100 a ends: b then c (submit order) both start.
    # delays: a 0, b 100-10 = 90, c 100-20 = 80 -> mean 56.67, p50 80. ends: a 100, c 110, b 150.
    starts = {n: (o.first_start, o.end) for n, o in result.outcomes.items()}
    assert starts == {"a": (0.0, 100.0), "b": (100.0, 150.0), "c": (100.0, 110.0)}
    summary = summarise(result, {})
    assert summary["queueing_delay_s"]["mean"] == pytest.approx(170 / 3)
    assert summary["queueing_delay_s"]["p50"] == pytest.approx(80.0)
    # completion times: a 100, b 140, c 90 -> mean 110
    assert summary["completion_time_s"]["mean"] == pytest.approx(110.0)
    # allocation: 100% on [0,100), 100% on [100,110), 50% on [110,150) -> mean (100*110 + 50*40)/150 = 86.67
    assert summary["gpu_allocation_pct_mean"] == pytest.approx(86.667, abs=1e-3)


def test_backfill_lets_a_short_job_run_but_holds_one_that_would_delay_the_reservation() -> None:
    result = _replay("backfill.jsonl")
    # t=0 a (1 card, max 100). t=10 b needs 2 cards: reserved to start at 100 (when a ends).
    # t=20 c (1 card, max 30) ends by 50 <= 100: backfilled at once. t=30 d (no max_runtime): no card free.
    # t=50 c ends; d would now fit but would still hold a card at 100: held. t=100 a ends: b starts.
    # t=110 b ends: d starts. delays: a 0, b 90, c 0, d 80.
    delays = {n: o.first_start - o.arrival for n, o in result.outcomes.items()}
    assert delays == {"a": 0.0, "b": 90.0, "c": 0.0, "d": 80.0}
    assert any("would delay b, which holds a reservation to start by t=100" in r
               for r in result.outcomes["d"].reasons)


def test_without_backfill_protection_the_long_job_jumps_ahead() -> None:
    result = _replay("backfill.jsonl", backfill=False)
    # d starts at 50 when c frees a card; b must then wait for both a (100) and d (250).
    assert result.outcomes["d"].first_start == 50.0
    assert result.outcomes["b"].first_start == 250.0


def test_reclaim_preempts_a_borrower_and_requeues_it() -> None:
    nodes = load_nodes(FIXTURES / "one_node.csv")
    queues = {"a": QueueSpec("a", ResourceVector(0, 0, 1000)), "b": QueueSpec("b", ResourceVector(0, 0, 1000))}
    workloads = [
        SimWorkload("borrow1", 0.0, 500.0, request(gpu=1), queue="a"),
        SimWorkload("borrow2", 0.0, 500.0, request(gpu=1), queue="a"),
        SimWorkload("owner", 100.0, 50.0, request(gpu=1), queue="b"),
    ]
    config = ReplayConfig(SchedulerProfile(policy="bestfit", min_runtime_s=0), queues)
    result = ReplayEngine(nodes, workloads, config).run()
    # a borrows b's idle guarantee (2 cards for a guarantee of 1). At t=100 b's owner reclaims: the borrower
    # with the shortest run time (equal: then the id, borrow1) is preempted and requeued; owner runs
    # 100..150; borrow1 restarts at 150 and runs its full 500 s again.
    assert result.preemptions == 1
    assert result.outcomes["owner"].first_start == 100.0
    assert result.outcomes["borrow1"].preemptions == 1
    assert result.outcomes["borrow1"].end == 650.0
    assert result.outcomes["borrow2"].end == 500.0
    summary = summarise(result, queues)
    assert summary["preemptions"] == 1
    assert set(summary["queues"]) == {"a", "b"}


def test_never_fitting_workloads_are_rejected_not_left_pending() -> None:
    nodes = load_nodes(FIXTURES / "one_node.csv")
    workloads = [SimWorkload("huge", 0.0, 10.0, request(gpu=4))]
    result = ReplayEngine(nodes, workloads, ReplayConfig()).run()
    assert result.outcomes["huge"].rejected is not None
    assert "largest node has 2" in result.outcomes["huge"].rejected


def test_time_weighted_mean_and_jain_index() -> None:
    # value 10 on [0, 5), 20 on [5, 10): mean 15
    assert time_weighted_mean([(0.0, 10.0), (5.0, 20.0)], 10.0) == pytest.approx(15.0)
    assert jain_index([0.5, 0.5]) == pytest.approx(1.0)
    assert jain_index([1.0, 0.0]) == pytest.approx(0.5)  # (1)^2 / (2 * 1)
    assert jain_index([]) is None
