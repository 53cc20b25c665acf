"""The whole GPU path at library level, with real processes:

fake NVML node -> discovery -> scheduler Gpu objects -> snapshot and a scheduling cycle -> the GPU
environment of every bound replica -> real child processes started with it -> scripted GPU memory of
those processes (a grandchild's pid, found through its session) -> monitor -> over-use event and kill
decision -> Prometheus metrics.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpupool.domain.nodes import Node
from gpupool.domain.resources import ReplicaRequest, SharingMode, parse_gpu
from gpupool.gpu.fake import FakeBackend
from gpupool.gpu.inventory import to_domain_gpus
from gpupool.gpu.metrics import GpuMetrics
from gpupool.gpu.monitor import GpuMonitor, MonitorPolicy, ReplicaKey, allocations_for, process_groups
from gpupool.gpu.sharing import SharingConfig, gpu_environment, install_sitecustomize
from gpupool.scheduler.cycle import run_cycle
from gpupool.scheduler.profile import SchedulerProfile
from gpupool.scheduler.snapshot import ClusterSnapshot
from gpupool.scheduler.types import PendingWorkload, ReplicaGroup

A100 = "NVIDIA A100-SXM4-80GB"
GIB = 1024**3

# Prints the GPU environment, starts a grandchild in the same session (as a training script's worker would)
# and prints its pid, then waits to be stopped.
CHILD = """
import json, os, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
env = {k: v for k, v in os.environ.items() if k.startswith(("CUDA_", "GPUPOOL_")) or k == "PYTHONPATH"}
print(json.dumps({"env": env, "worker": worker.pid, "sid": os.getsid(0)}), flush=True)
time.sleep(120)
"""


def _workload(workload_id: str, gpu: object) -> PendingWorkload:
    request = ReplicaRequest(1000, 1024, parse_gpu(gpu))
    return PendingWorkload(workload_id, "default", (ReplicaGroup("worker", 1, request),))


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for child in started:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        if child.stdout:
            child.stdout.close()


def _start(env: dict[str, str], children: list[subprocess.Popen[str]]) -> tuple[subprocess.Popen[str], dict]:
    base = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    child = subprocess.Popen([sys.executable, "-c", CHILD], env={**base, **env}, stdout=subprocess.PIPE,
                             text=True, start_new_session=True)
    children.append(child)
    assert child.stdout is not None
    return child, json.loads(child.stdout.readline())


def test_discovery_to_scheduling_to_environment_to_overuse(tmp_path: Path,
                                                           children: list[subprocess.Popen[str]]) -> None:
    # 1. a scripted node: a time-sliced card, an exclusive card, a MIG-partitioned card
    backend = FakeBackend({"node": "e2e", "gpus": [
        {"model": A100, "memory": "80GiB", "count": 2, "nvlink": "board", "utilization": 40},
        {"model": A100, "memory": "80GiB", "mig": ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]},
    ]}, epoch=0.0)
    gpus = to_domain_gpus(backend.discover(), modes={0: SharingMode.SHARED})
    node = Node("e2e", 32_000, 256 * 1024, gpus)

    # 2. the scheduler places a notebook on a share, a job on a whole card and a service on a MIG instance
    pending = [_workload("nb", {"share": 0.25, "memory": "10GiB"}), _workload("train", 1),
               _workload("infer", {"mig": "1g.10gb"})]
    decisions = run_cycle(ClusterSnapshot([node]), pending, [], {}, SchedulerProfile(), now=0.0)
    bound = decisions.bound()
    assert sorted(bound) == ["infer", "nb", "train"], decisions.pending
    assert [a.index for a in bound["nb"][0].gpus] == [0]  # the only card that takes shares
    assert [a.index for a in bound["train"][0].gpus] == [1]
    assert [a.index for a in bound["infer"][0].gpus] == [2]

    # 3. each replica gets its GPU environment and runs as a real process in its own session
    config = SharingConfig(home=tmp_path)
    install_sitecustomize(config)
    seen, keys, allocations = {}, {}, []
    for workload_id, placements in sorted(bound.items()):
        key = ReplicaKey(workload_id, 0, "vision")
        env = gpu_environment(placements[0].gpus, node.gpus, config)
        child, seen[workload_id] = _start(env.merged_into({}), children)
        keys[child.pid] = key  # the executor knows each replica's session id (= its leader's pid)
        allocations += allocations_for(key, placements[0].gpus, node.gpus)
    assert seen["nb"]["env"]["CUDA_VISIBLE_DEVICES"] == gpus[0].uuid
    assert seen["nb"]["env"]["GPUPOOL_GPU_MEMORY_LIMIT_MIB"] == "10240"
    assert seen["nb"]["env"]["PYTHONPATH"] == str(config.sitecustomize_dir)
    assert seen["train"]["env"]["CUDA_VISIBLE_DEVICES"] == gpus[1].uuid
    one_g = bound["infer"][0].gpus[0].mig_instance
    assert one_g is not None and gpus[2].mig_instances[one_g].profile == "1g.10gb"
    assert seen["infer"]["env"]["CUDA_VISIBLE_DEVICES"] == gpus[2].mig_instances[one_g].uuid

    # 4. the GPU reports memory of the replicas' worker processes: the notebook's worker holds 14 GiB of
    #    the 10 GiB it asked for; the job uses 30 GiB of its whole card
    nb_worker, train_worker = seen["nb"]["worker"], seen["train"]["worker"]
    assert process_groups(nb_worker)[1] == seen["nb"]["sid"]
    backend.add_process(nb_worker, 0, "14GiB")
    backend.add_process(train_worker, 1, "30GiB")
    backend.add_process(424242, 1, "1GiB")  # something outside gpupool

    # 5. the monitor attributes the memory through the sessions and, after the grace period, decides
    monitor = GpuMonitor("e2e", MonitorPolicy(overuse_grace_s=10.0, overuse_kill=True))
    first = monitor.observe(backend.sample(0.0), allocations, keys)
    assert first.overuse == ()
    report = monitor.observe(backend.sample(10.0), allocations, keys)
    usage = {(u.replica.workload_id, u.gpu_index): u.memory_bytes for u in report.usage}
    assert usage == {("nb", 0): 14 * GIB, ("train", 1): 30 * GIB}
    assert [p.pid for p in report.unowned] == [424242]
    (event,) = report.overuse
    assert (event.replica.workload_id, event.used_mib, event.allowed_mib, event.kill) == ("nb", 14336, 10240, True)

    # 6. the kill decision stops the replica's whole session (what the executor's stop does)
    nb_child = next(c for c in children if keys[c.pid].workload_id == "nb")
    os.killpg(nb_child.pid, signal.SIGKILL)
    assert nb_child.wait(timeout=10) == -signal.SIGKILL

    # 7. metrics expose the per-workload memory and the readings
    metrics = GpuMetrics()
    metrics.update_gpus([report], {"e2e": gpus})
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(metrics.render().decode()) for s in family.samples}
    assert samples[("gpupool_workload_gpu_memory_used_bytes", (("project", "vision"), ("workload", "nb")))] \
        == 14 * GIB
    assert samples[("gpupool_gpu_utilization", (("gpu", "0"), ("model", "A100-SXM4-80GB"), ("node", "e2e"),
                                                ("uuid", gpus[0].uuid)))] == 0.4
    backend.close()
