"""Cluster mode on a real Ray cluster in network namespaces (see tests/support/ray_cluster.py; needs root).

Measures, with three nodes on 10.200.0.0/24:
- start latency: from `start()` until `poll()` first says RUNNING, for N trivial replicas one after the
  other, through the Ray executor (an agent on a worker node) and through the local executor on this host;
- node-loss detection: from the SIGKILL of a worker's raylet, and from cutting a worker's link, until Ray
  reports the node dead and a poll of a replica there says LOST (the server then retries it on its next
  node sync, GPUPOOL_NODE_SYNC_INTERVAL_S, default 5 s; the cluster tests run it at 0.5 s).

    sudo .venv/bin/python benchmarks/cluster/bench_cluster.py [--replicas 20]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the tests' cluster support

from tests.support.ray_cluster import inside, start_cluster

from gpupool.executors.base import Executor, ReplicaLaunch, ReplicaState
from gpupool.executors.local import LocalExecutor


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=20)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gpupool-bench-cluster-"))
    began = time.monotonic()
    cluster = start_cluster(root, [("node-1", ""), ("node-2", "2xA100-80GB"), ("node-3", "2xA100-80GB")])
    print(f"3-node cluster started in {time.monotonic() - began:.1f} s")
    try:
        with inside(cluster.head.netns):
            from gpupool.executors.ray import RayExecutor  # noqa: PLC0415  (Ray only here)

            ray_executor = RayExecutor(cluster.address)
            nodes = {d.name: agent for agent, d in ray_executor.cluster_nodes()}
            print(f"agents: {sorted(nodes)}")
            work = root / "work"
            work.mkdir()
            start_latencies(ray_executor, "node-2", 2, work, "warm")  # the agent's first calls import more
            ray_samples = start_latencies(ray_executor, "node-2", args.replicas, work, "ray")
            local_samples = start_latencies(LocalExecutor(root / "local"), "local", args.replicas, work, "local")
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
                while ray_executor.poll(handle).state is not ReplicaState.LOST:
                    time.sleep(0.05)
                print(f"node loss by {how}: the replica polls LOST after {time.monotonic() - began:.1f} s")
    finally:
        cluster.teardown()


if __name__ == "__main__":
    main()
