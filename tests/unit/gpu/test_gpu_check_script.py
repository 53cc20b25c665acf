"""The read-only check script for GPU machines (benchmarks/gpu/check_gpu.py) runs end to end against the fake
NVML, so that whoever runs it on a real GPU gets a report, not a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "gpu" / "check_gpu.py"


def test_the_check_script_reports_discovery_both_process_lists_and_attribution(tmp_path: Path) -> None:
    description = tmp_path / "node.yaml"
    description.write_text(yaml.safe_dump({
        "gpus": [{"model": "NVIDIA H100 80GB HBM3", "memory": "80GiB", "reserved": "512MiB"}],
        "processes": [{"pid": 500, "gpu": 0, "memory": "300MiB"},
                      {"pid": 601, "gpu": 0, "memory": "4GiB", "mps_client": True}]}))
    out = tmp_path / "report.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--fake", str(description), "--out", str(out)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    (gpu,) = report["discovery"]["gpus"]
    assert (gpu["name"], gpu["sm_count"]) == ("NVIDIA H100 80GB HBM3", 132)
    raw = report["nvml_raw"]
    assert raw["memory_v2"]["used"] == 4396 and raw["memory_v1"]["used"] == 4396 + 512  # v1 counts the reserve
    assert raw["nvmlDeviceGetMPSComputeRunningProcesses"] == [{"pid": 601, "used_mib": 4096}]
    assert raw["attributes_whole_card"].startswith("NVMLError")  # MIG device handles only
    cap = report["cap"]
    assert cap["attributed_mib"] == {"check/gpu0": 1024} and cap["attribution"] == "pid"
    assert [row[0] for row in cap["mps_servers"]] == [500]
