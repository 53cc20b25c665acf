"""Trace loaders: the openb node and pod lists (11- and 5-column) and the gpupool workload format."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpupool.domain.resources import SharingMode
from gpupool.sim.traces.generic import load_workloads
from gpupool.sim.traces.openb import TraceError, load_nodes, load_pods
from gpupool.sim.workloads import from_openb

FIXTURES = Path(__file__).parent / "fixtures"


def test_openb_nodes_become_shared_cards_of_their_model() -> None:
    nodes = load_nodes(FIXTURES / "nodes.csv")
    assert [(n.name, n.cpu_milli, n.memory_mib, len(n.gpus)) for n in nodes] == [
        ("n1", 8000, 32768, 2), ("n2", 4000, 16384, 1)]
    assert {g.model for g in nodes[0].gpus} == {"V100"}
    assert all(g.mode == SharingMode.SHARED for n in nodes for g in n.gpus)


def test_openb_pods_with_times_specs_and_requests() -> None:
    pods = {p.name: p for p in load_pods(FIXTURES / "pods.csv")}
    assert pods["pair"].gpu_spec == ("V100",)
    assert pods["pair"].request().gpu.count == 2
    assert pods["half"].request().gpu.share_milli == 500
    assert pods["cpu"].request().gpu.is_none
    assert (pods["whole"].creation_time, pods["whole"].deletion_time, pods["whole"].qos) == (0.0, 100.0, "LS")
    assert pods["t4share"].gpu_total_milli == 300


def test_five_column_multigpu_files_load_without_times() -> None:
    pods = load_pods(FIXTURES / "pods_multigpu.csv")
    assert [(p.name, p.num_gpu, p.gpu_milli, p.creation_time) for p in pods] == [
        ("m1", 1, 1000, None), ("m2", 2, 1000, None), ("m3", 1, 250, None)]
    with pytest.raises(ValueError, match="multigpu variants carry no times"):
        from_openb(pods)


def test_malformed_pod_row_names_file_line_and_column() -> None:
    with pytest.raises(TraceError) as caught:
        load_pods(FIXTURES / "bad_pods.csv")
    message = str(caught.value)
    assert "bad_pods.csv: line 3, column memory_mib: expected a non-negative integer, got 'lots'" in message


def test_missing_columns_and_inconsistent_gpu_fields_are_refused(tmp_path: Path) -> None:
    no_gpu_column = tmp_path / "nodes.csv"
    no_gpu_column.write_text("sn,cpu_milli,memory_mib\nx,1,1\n")
    with pytest.raises(TraceError, match="line 1: missing column"):
        load_nodes(no_gpu_column)
    multi_share = tmp_path / "pods.csv"
    multi_share.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,1,1,2,500\n")
    with pytest.raises(TraceError, match=r"line 2, column gpu_milli: expected 1\.\.1000 per GPU"):
        load_pods(multi_share)
    with pytest.raises(TraceError, match="cannot read"):
        load_pods(tmp_path / "absent.csv")


def test_generic_csv_trace() -> None:
    workloads = load_workloads(FIXTURES / "replay.csv")
    assert [(w.name, w.arrival_s, w.duration_s, w.request.gpu.count) for w in workloads] == [
        ("a", 0.0, 100.0, 2), ("b", 10.0, 50.0, 1), ("c", 20.0, 10.0, 1)]
    assert workloads[0].request.memory_mib == 1024


def test_generic_jsonl_trace_with_units_mappings_and_blank_lines() -> None:
    workloads = {w.name: w for w in load_workloads(FIXTURES / "backfill.jsonl")}
    assert workloads["c"].max_runtime_s == 30.0
    assert workloads["d"].request.gpu.count == 1
    assert workloads["b"].max_runtime_s is None


@pytest.mark.parametrize(("text", "expected"), [
    ("name,arrival\nx,1\n", "line 2, duration: missing"),
    ("name,arrival,duration,gpu\nx,1,10,1.5\n", "line 2, gpu: 1.5 GPUs"),
    ("name,arrival,duration,gpus\nx,1,10,1\n", 'line 2, gpus: unknown field (did you mean "gpu"?)'),
    ("name,arrival,duration,priority\nx,1,10,high\n", "line 2, priority: expected an integer"),
    ("name,arrival,duration\nx,-4,10\n", "line 2, arrival: expected seconds"),
    ("name,arrival,duration\nx,1,10\nx,2,10\n", "line 3, name: 'x' appears twice"),
    ("name,arrival,duration,gpu_model\nx,1,10,A100\n", "gpu_model: a GPU model was given but no gpu amount"),
])
def test_generic_trace_errors_say_where_and_what(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "trace.csv"
    path.write_text(text)
    with pytest.raises(TraceError) as caught:
        load_workloads(path)
    assert expected in str(caught.value)
    assert str(path) in str(caught.value)


def test_generic_jsonl_reports_bad_json_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text('{"arrival": 0, "duration": 5}\n{"arrival": 1, "duration": \n')
    with pytest.raises(TraceError, match="line 2: not valid JSON"):
        load_workloads(path)
