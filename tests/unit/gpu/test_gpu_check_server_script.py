"""The GPU machine's server check (benchmarks/gpu/check_server.py) runs end to end against a scripted fake node:
a real `gpupool up`, real replica processes, the fake NVML reporting 3 GiB for each replica process (found by
its environment), attribution per workload in `gpupool top` and /metrics, no over-use event under the cap."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.gpus import A100, write_description

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "gpu" / "check_server.py"
GIB = 1024**3


def test_the_server_check_attributes_each_replica_on_a_fake_node(tmp_path: Path) -> None:
    description = write_description(tmp_path, {"node": "check", "gpus": [
        {"model": A100, "memory": "80GiB", "count": 1, "sm_count": 108}], "processes": [
        {"env": "CHECK_SERVER_USE=1", "memory": [[0, "3GiB"]]}]})
    out = tmp_path / "report.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--fake", str(description), "--out", str(out)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    exclusive = report["exclusive"]
    assert exclusive["top"]["memory_used_bytes"] == 3 * GIB and exclusive["top"]["milli"] == 1000
    wid = exclusive["top"]["workload_id"]
    assert exclusive["metrics"]["lines"] == [
        f'gpupool_workload_gpu_memory_used_bytes{{project="default",workload="{wid}"}} 3.221225472e+09']
    shared = report["shared"]
    assert len(shared["top"]) == 2  # two replicas on one card, each attributed on its own
    for row in shared["top"].values():
        assert (row["milli"], row["memory_mib"], row["memory_used_bytes"]) == (250, 8192, 3 * GIB)
        assert row["nvml_minus_cap_mib"] == 3072 - 8192
    assert shared["overuse_events_false_positive"] == dict.fromkeys(shared["top"], False)
    assert "mps" not in report
