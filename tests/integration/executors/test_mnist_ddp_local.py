"""examples/mnist_ddp/train.py as a 2-replica gang on the local executor, with the torch rendezvous
variables gpupool injects: both ranks run, all-reduce their gradients (they end with identical parameters
although each trained on other data) and exit 0."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gpupool.executors.base import ReplicaState
from gpupool.executors.environment import identity_env, merge_env
from gpupool.executors.local import pick_free_ports
from gpupool.executors.rendezvous import LOCALHOST, rendezvous_env
from gpupool.scheduler.types import ReplicaPlacement

if TYPE_CHECKING:
    from conftest import LocalHarness

TRAIN_SCRIPT = Path(__file__).resolve().parents[3] / "examples" / "mnist_ddp" / "train.py"
WORLD_SIZE = 2


@pytest.mark.slow
def test_two_replica_ddp_job_all_reduces_and_succeeds(local: LocalHarness) -> None:
    placements = [ReplicaPlacement("local", 1000, 2048, role="worker", ordinal=k) for k in range(WORLD_SIZE)]
    rendezvous = rendezvous_env("torch", placements, {"local": LOCALHOST}, pick_free_ports(1))
    out = local.tmp / "results"
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(TRAIN_SCRIPT))} --steps 20 --out {out}"
    handles = [
        local.start(command, workload_id="ddp1", replica=rank, env=merge_env(
            {"OMP_NUM_THREADS": "1"}, identity_env("ddp1", rank, "worker"), rendezvous[rank]))
        for rank in range(WORLD_SIZE)
    ]
    statuses = [local.wait(handle, timeout_s=180) for handle in handles]
    logs = ["\n".join(local.executor.logs(h)) for h in handles]
    shown = "\n".join(f"--- rank {rank}:\n{log}" for rank, log in enumerate(logs))  # whole, not cut short
    assert [(s.state, s.exit_code) for s in statuses] == [(ReplicaState.SUCCEEDED, 0)] * WORLD_SIZE, shown

    results = [json.loads((out / f"rank-{rank}.json").read_text()) for rank in range(WORLD_SIZE)]
    assert [(r["rank"], r["world_size"], r["local_rank"]) for r in results] == [(0, 2, 0), (1, 2, 1)]
    assert results[0]["data_checksum"] != results[1]["data_checksum"]  # each rank saw other data ...
    assert results[0]["param_checksum"] == results[1]["param_checksum"]  # ... yet ended identical: all-reduce
    assert all(r["final_loss"] < r["first_loss"] for r in results)  # and it learned
    assert results[0]["mean_final_loss"] == results[1]["mean_final_loss"]
    for rank, log in enumerate(logs):  # each rank also printed its result line to its own log
        assert json.loads(log.splitlines()[-1])["rank"] == rank
