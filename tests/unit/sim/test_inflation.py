"""The inflation experiment: sampling, ordered placement arithmetic on a toy cluster, placements files."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from gpupool.scheduler.placement.fragmentation import TargetShape
from gpupool.sim.inflation import place_in_order, run_inflation, sample_pods
from gpupool.sim.placements_file import verify_placements, write_placements
from gpupool.sim.traces.openb import load_nodes, load_pods

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def toy() -> tuple[list, dict]:
    return load_nodes(FIXTURES / "nodes.csv"), {p.name: p for p in load_pods(FIXTURES / "pods.csv")}


def test_sampling_stops_before_passing_the_target_and_is_seeded(toy: tuple[list, dict]) -> None:
    _, pods = toy
    pod_list = list(pods.values())
    first = sample_pods(pod_list, 3000, random.Random(7), 1.3)
    again = sample_pods(pod_list, 3000, random.Random(7), 1.3)
    assert [p.name for p in first] == [p.name for p in again]
    assert sum(p.gpu_total_milli for p in first) <= 1.3 * 3000
    # Replaying the same generator: the pod drawn after the last kept one would have passed 3900 milli.
    rng = random.Random(7)
    total, drawn = 0, None
    while True:
        drawn = pod_list[rng.randrange(len(pod_list))]
        if total + drawn.gpu_total_milli > 3900:
            break
        total += drawn.gpu_total_milli
    assert total == sum(p.gpu_total_milli for p in first)
    assert total + drawn.gpu_total_milli > 3900


def test_ordered_placement_curve_worked_by_hand(toy: tuple[list, dict]) -> None:
    nodes, pods = toy
    order = [pods[n] for n in ("half", "half", "whole", "pair", "t4share", "whole")]
    result = place_in_order(nodes, order, "bestfit", 0, target=[])
    # Capacity: n1 has 2 cards, n2 has 1: 3000 milli. bestfit leftover = 0.5 (free_cpu - cpu) / 8000
    #   + 0.5 (free_gpu - gpu) / 2000 (the largest node: 8000 milli CPU, 2000 milli GPU), lowest wins.
    # 1. half (cpu 1000, 500): n1 0.5*7000/8000 + 0.5*1500/2000 = 0.8125; n2 0.5*3000/8000 + 0.5*500/2000
    #    = 0.3125 -> n2 card 0.                            arrived 500/3000 = 16.67%, allocated 16.67%
    # 2. half: n1 0.8125; n2 0.5*2000/8000 + 0 = 0.125 -> n2 card 0 (now full).     33.33%, 33.33%
    # 3. whole (cpu 2000, 1 card): only n1 has a free card -> n1 card 0.            66.67%, 66.67%
    # 4. pair (2 cards, V100): n1 has 1 free card -> dropped.                      133.33%, 66.67%
    # 5. t4share (300, T4): the T4 card on n2 has 0 free -> dropped.               143.33%, 66.67%
    # 6. whole: n1 card 1 (CPU left 6000 >= 2000).                                 176.67%, 100.00%
    placed = [(r.placement.node, [(g.index, g.milli) for g in r.placement.gpus]) if r.placement else None
              for r in result.records]
    assert placed == [("n2", [(0, 500)]), ("n2", [(0, 500)]), ("n1", [(0, 1000)]), None, None,
                      ("n1", [(1, 1000)])]
    assert result.arrived_pct == pytest.approx([16.667, 33.333, 66.667, 133.333, 143.333, 176.667], abs=1e-3)
    assert result.allocated_pct == pytest.approx([16.667, 33.333, 66.667, 66.667, 66.667, 100.0], abs=1e-3)
    # Unallocated at 100% arrived: the first pod reaching 100% is pod 4 -> 100 - 66.67.
    assert result.unallocated_at(100) == pytest.approx(33.333, abs=1e-3)


def test_fragmentation_is_measured_when_arrived_first_reaches_90_percent(toy: tuple[list, dict]) -> None:
    nodes, pods = toy
    # Target: only whole 1-GPU pods. After pod 3 (arrived 66.67%) nothing; after pod 4 (133%) the state is:
    # n1 card 1 free (1000), n2 card 0 full. F = 0 (the whole shape runs on n1, no partial cards).
    target = [TargetShape(1000, 1024, 1, 1000, probability=1.0)]
    order = [pods[n] for n in ("half", "half", "whole", "pair")]
    result = place_in_order(nodes, order, "bestfit", 0, target=target)
    assert result.fragmentation_pct_of_capacity == 0.0
    # Now leave a 500 share on n2 instead: after half + whole + pair, n2 card 0 has 500 free, which the whole
    # shape cannot use: F = 500 -> 16.67% of capacity; idle = 3000 - 1500 allocated = 1500 -> 33.33% of idle.
    result = place_in_order(nodes, [pods[n] for n in ("half", "whole", "pair")], "bestfit", 0, target=target)
    assert result.fragmentation_pct_of_capacity == pytest.approx(16.667, abs=1e-3)
    assert result.fragmentation_pct_of_idle == pytest.approx(33.333, abs=1e-3)


def test_placements_file_round_trip_is_feasible_and_recomputes_the_curve(toy: tuple[list, dict],
                                                                          tmp_path: Path) -> None:
    nodes, pods = toy
    result = run_inflation(nodes, list(pods.values()), "fgd", seed=3)
    path = tmp_path / "placements.csv"
    write_placements(result.records, path)
    lines = path.read_text().splitlines()
    assert lines[0] == "seq,pod,node,gpus"
    assert len(lines) == len(result.records) + 1
    report = verify_placements(nodes, list(pods.values()), path)
    assert report.problems == []
    assert report.arrived_pct == pytest.approx(result.arrived_pct)
    assert report.allocated_pct == pytest.approx(result.allocated_pct)


def test_verify_catches_an_overcommitted_card(toy: tuple[list, dict], tmp_path: Path) -> None:
    nodes, pods = toy
    path = tmp_path / "bad.csv"
    path.write_text("seq,pod,node,gpus\n0,whole,n1,0:1000\n1,half,n1,0:500\n2,pair,n2,0:1000;1:1000\n"
                    "3,cpu,n1,\n4,t4share,n1,1:300\n")
    report = verify_placements(nodes, list(pods.values()), path)
    assert report.problems == [
        "line 3 (half on n1): GPU 0 has 0 milli free, needs 500",
        "line 4 (pair on n2): GPU model T4 not in gpu_spec V100",
        "line 6 (t4share on n1): GPU model V100 not in gpu_spec T4",
    ]
