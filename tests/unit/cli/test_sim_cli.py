"""`gpupool sim`: the inflation run, sweep with plot, replay with plot and queues, verify, and errors."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from gpupool.cli.main import app

FIXTURES = Path(__file__).parents[1] / "sim" / "fixtures"
NODES = str(FIXTURES / "nodes.csv")
PODS = str(FIXTURES / "pods.csv")
runner = CliRunner()


def test_openb_json_and_placements_out_then_verify(tmp_path: Path) -> None:
    placements = tmp_path / "placements.csv"
    result = runner.invoke(app, ["sim", "openb", "--nodes", NODES, "--pods", PODS, "--policy", "bestfit", "--seed",
                                 "5", "--placements-out", str(placements), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["policy"] == "bestfit" and summary["seed"] == 5
    assert summary["pods"] == len(placements.read_text().splitlines()) - 1
    verified = runner.invoke(app, ["sim", "verify", "--nodes", NODES, "--pods", PODS, "--placements",
                                   str(placements), "--json"])
    assert verified.exit_code == 0, verified.output
    figures = json.loads(verified.stdout)
    assert figures["problem_count"] == 0
    assert figures["unallocated_pct@100"] == summary["unallocated_pct@100"]


def test_verify_exits_1_on_an_infeasible_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("seq,pod,node,gpus\n0,whole,n2,0:1000\n1,whole,n2,0:1000\n")
    result = runner.invoke(app, ["sim", "verify", "--nodes", NODES, "--pods", PODS, "--placements", str(bad)])
    assert result.exit_code == 1
    assert "1 problems" in result.output
    assert "GPU 0 has 0 milli free" in result.output


def test_bad_input_is_a_json_error_with_json(tmp_path: Path) -> None:
    nodes = tmp_path / "garbled.csv"
    nodes.write_text("this is not,a node list\n1,2\n")
    result = runner.invoke(app, ["sim", "openb", "--nodes", str(nodes), "--pods", PODS, "--json"])
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert (error["kind"], error["exit_code"]) == ("usage_error", 2) and error["message"]


def test_sweep_table_and_plot(tmp_path: Path) -> None:
    plot = tmp_path / "curves.png"
    result = runner.invoke(app, ["sim", "sweep", "--nodes", NODES, "--pods", PODS, "--policies", "bestfit,fgd",
                                 "--seeds", "1-3", "--jobs", "1", "--plot", str(plot), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [(r["policy"], r["seeds"]) for r in rows] == [("bestfit", [1, 2, 3]), ("fgd", [1, 2, 3])]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_replay_with_queues_file_and_plot(tmp_path: Path) -> None:
    queues = tmp_path / "queues.yaml"
    queues.write_text("default: {guaranteed: {gpu: 1}, weight: 2}\n")
    plot = tmp_path / "replay.png"
    result = runner.invoke(app, ["sim", "replay", "--nodes", str(FIXTURES / "one_node.csv"), "--workloads",
                                 str(FIXTURES / "replay.csv"), "--queues", str(queues), "--plot", str(plot),
                                 "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["completed"] == 3
    assert summary["queueing_delay_s"]["p50"] == 80.0
    assert summary["queues"]["default"]["guaranteed"] == 0.5
    assert plot.exists()
    table = runner.invoke(app, ["sim", "replay", "--nodes", str(FIXTURES / "one_node.csv"), "--pods", PODS])
    assert table.exit_code == 0, table.output
    assert "queueing_delay_s" in table.output


def test_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    unknown = runner.invoke(app, ["sim", "openb", "--nodes", NODES, "--pods", PODS, "--policy", "bestft"])
    assert unknown.exit_code == 2
    assert 'did you mean "bestfit"' in unknown.output
    assert "Traceback" not in unknown.output
    seeds = runner.invoke(app, ["sim", "sweep", "--nodes", NODES, "--pods", PODS, "--seeds", "9-1"])
    assert seeds.exit_code == 2
    assert "cannot read seeds" in seeds.output
    both = runner.invoke(app, ["sim", "replay", "--nodes", NODES])
    assert both.exit_code == 2
    assert "exactly one of --pods" in both.output
    bad_queue = tmp_path / "q.yaml"
    bad_queue.write_text("team: {weight: 0}\n")
    result = runner.invoke(app, ["sim", "replay", "--nodes", NODES, "--pods", PODS, "--queues", str(bad_queue)])
    assert result.exit_code == 2
    assert "weight must be above 0" in result.output


def test_every_sim_command_has_help() -> None:
    for command in ("openb", "sweep", "replay", "verify"):
        result = runner.invoke(app, ["sim", command, "--help"])
        assert result.exit_code == 0
        assert "--nodes" in result.output
