"""Cluster mode on a real Ray cluster in network namespaces (see tests/support/ray_cluster.py; needs root).

Measures, with three nodes on 10.200.0.0/24:
- start latency: from `start()` until `poll()` first says RUNNING, for N trivial replicas one after the
  other, through the Ray executor (an agent on a worker node) and through the local executor on this host;
- node-loss detection: from the SIGKILL of a worker's raylet, and from cutting a worker's link, until Ray
  reports the node dead (the server then marks its replicas lost and retries them on its next node sync,
  GPUPOOL_NODE_SYNC_INTERVAL_S, default 5 s; the cluster tests run it at 0.5 s and measure to the retry).

    sudo .venv/bin/python benchmarks/cluster/bench_cluster.py [--replicas 20]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the tests' cluster support

from tests.support.ray_cluster import RayCluster, RayNode, start_cluster

from gpupool.executors.base import Executor, ReplicaLaunch, ReplicaState
from gpupool.executors.local import LocalExecutor

NODES = [("node-1", ""), ("node-2", "2xA100-80GB"), ("node-3", "2xA100-80GB")]


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks."""
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def start_latencies(executor: Executor, node: str, count: int, work: Path, prefix: str) -> list[float]:
    """Milliseconds from start() to the first RUNNING poll, for `count` replicas started one by one."""
    samples = []
    for index in range(count):
        launch = ReplicaLaunch(workload_id=f"{prefix}{index}", replica=0, role="worker", command="sleep 30",
                               env={"HOME": str(work)}, cwd=work, log_dir=work / "logs", node=node)
        began = time.perf_counter()
        handle = executor.start(launch)
        while executor.poll(handle).state is not ReplicaState.RUNNING:
            time.sleep(0.001)
        samples.append((time.perf_counter() - began) * 1000)
        executor.stop(handle, 0)
    return samples


def row(name: str, samples: list[float]) -> str:
    return (f"| {name} | {percentile(samples, 50):.0f} | {percentile(samples, 95):.0f} | "
            f"{statistics.mean(samples):.0f} |")


def measure(cluster: RayCluster, root: Path, replicas: int) -> None:
    """The measurements, run in the head's namespace (a Ray driver must live wholly inside it)."""
    from gpupool.executors.ray import RayExecutor  # noqa: PLC0415  (Ray only here)

    ray_executor = RayExecutor(cluster.address)
    print(f"agents: {sorted(d.name for _, d in ray_executor.cluster_nodes())}")
    work = root / "work"
    work.mkdir(exist_ok=True)
    start_latencies(ray_executor, "node-2", 2, work, "warm")  # the agent's first calls import more
    ray_samples = start_latencies(ray_executor, "node-2", replicas, work, "ray")
    local_samples = start_latencies(LocalExecutor(root / "local"), "local", replicas, work, "local")
    print("| executor | p50 (ms) | p95 (ms) | mean (ms) |\n|---|---:|---:|---:|")
    print(row("ray (agent on another node)", ray_samples))
    print(row("local", local_samples))
    for node, how in ((cluster.nodes[2], "raylet SIGKILL"), (cluster.nodes[1], "link cut")):
        launch = ReplicaLaunch(workload_id=f"loss{node.index}", replica=0, role="worker", command="sleep 300",
                               env={"HOME": str(work)}, cwd=work, log_dir=work / "logs", node=node.name)
        handle = ray_executor.start(launch)
        while ray_executor.poll(handle).state is not ReplicaState.RUNNING:
            time.sleep(0.01)
        began = time.monotonic()
        if how == "link cut":
            cluster.link(node, up=False)
        else:
            os.kill(node.raylet_pid() or 0, signal.SIGKILL)
        while ray_executor.node_alive(str(handle["agent"])):  # what the server's node sync asks
            time.sleep(0.05)
        print(f"node loss by {how}: Ray reports the node dead after {time.monotonic() - began:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=20)
    parser.add_argument("--inner", default="", help=argparse.SUPPRESS)  # tag:root, run in the head's namespace
    args = parser.parse_args()
    if args.inner:
        tag, root_text = args.inner.split(":", 1)
        root = Path(root_text)
        cluster = RayCluster(tag, root, bridge=f"{tag}b")
        cluster.nodes = [RayNode(i, f"{tag}n{i}", name, gpus, 2, root / f"ray-{i}")
                         for i, (name, gpus) in enumerate(NODES, start=1)]
        measure(cluster, root, args.replicas)
        return
    root = Path(tempfile.mkdtemp(prefix="gpupool-bench-cluster-"))
    began = time.monotonic()
    cluster = start_cluster(root, NODES)
    print(f"3-node cluster started in {time.monotonic() - began:.1f} s", flush=True)
    try:
        subprocess.run(cluster.exec_argv(cluster.head, [sys.executable, __file__, "--replicas", str(args.replicas),
                                                        "--inner", f"{cluster.tag}:{root}"]), check=False)
    finally:
        cluster.teardown()


if __name__ == "__main__":
    main()
