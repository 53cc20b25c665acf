"""The examples a new user runs first, for real: `gpupool up`, the CLI, the local executor, real processes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tests.e2e.conftest import StartServer
from tests.support.processes import REPO, run_cli, run_json


def test_hello(start_server: StartServer) -> None:
    server = start_server()
    submitted: Any = run_json(["submit", "examples/hello.yaml"], server.env)
    wid = submitted["workload"]["id"]
    with server.client() as client:
        done = client.wait(wid, timeout_s=60)
    assert done.status == "succeeded", done.events
    logs = run_cli(["logs", str(wid)], server.env).stdout
    assert logs.strip() == f"hello from replica 0 of workload {wid}"
    shown: Any = run_json(["show", str(wid)], server.env)
    assert shown["replica_list"][0]["exit_code"] == 0


def test_mnist_ddp_runs_as_a_two_replica_gang(start_server: StartServer) -> None:
    pytest.importorskip("torch", reason="the DDP example needs PyTorch (pip install torch==2.13.0)")
    server = start_server("--cpus", "2", "--memory", "8GiB")
    submitted: Any = run_json(["submit", "examples/mnist_ddp/job.yaml"], server.env, cwd=REPO)
    wid = submitted["workload"]["id"]
    with server.client() as client:
        done = client.wait(wid, timeout_s=240, interval_s=0.5)
        assert done.status == "succeeded", (done.message, [list(client.logs(wid, replica=r)) for r in (0, 1)])
        assert [r.state for r in done.replica_list] == ["succeeded", "succeeded"]
        reports = [json.loads(line) for r in (0, 1) for line in client.logs(wid, replica=r, tail=1)]
    assert [(r["rank"], r["world_size"]) for r in reports] == [(0, 2), (1, 2)]
    # each rank trained on different data, yet after every step's all-reduce the models are identical
    assert reports[0]["data_checksum"] != reports[1]["data_checksum"]
    assert reports[0]["param_checksum"] == reports[1]["param_checksum"]
    assert reports[0]["mean_final_loss"] == reports[1]["mean_final_loss"]
