"""Scheduler speed on the Alibaba openb cluster (1,213 nodes, 6,212 GPUs).

    .venv/bin/python benchmarks/scheduler/bench_scheduler.py [--repeats 5]

1. Placements per second: pods sampled from openb_pod_list_default.csv (seeded), placed one at a time
   with the scheduler's Placer until 10,000 have been tried (fitting or not), per policy.
2. One scheduling cycle (`run_cycle`) over 10,000 pending single-replica workloads sampled from the same
   pod list, spread over 4 queues with guarantees, on the empty cluster.
Medians over --repeats runs are printed as a Markdown table: wall-clock seconds and CPU seconds (process
time, which a machine shared with other work inflates less). `--cycle-only` skips the placement rate.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

from gpupool.domain.queues import QueueSpec
from gpupool.domain.resources import ResourceVector
from gpupool.scheduler.cycle import run_cycle
from gpupool.scheduler.placement.registry import make_policy
from gpupool.scheduler.placer import Placer
from gpupool.scheduler.profile import SchedulerProfile
from gpupool.scheduler.snapshot import ClusterSnapshot
from gpupool.scheduler.types import PendingWorkload, ReplicaGroup
from gpupool.sim.inflation import default_target
from gpupool.sim.traces.openb import load_nodes, load_pods

TRACES = Path(__file__).resolve().parents[1] / "traces" / "alibaba-openb-2023"
PLACEMENTS = 10_000
PENDING = 10_000


def placements_per_second(nodes: list, pods: list, policy: str, seed: int) -> float:
    """Pods tried per second, one at a time, on a fresh snapshot."""
    rng = random.Random(seed)
    sample = [pods[rng.randrange(len(pods))].request() for _ in range(PLACEMENTS)]
    snap = ClusterSnapshot(nodes)
    placer = Placer(make_policy(policy, random.Random(seed), default_target(pods)), gang_topology=False)
    started = time.perf_counter()
    for request in sample:
        placement = placer.place_replica(snap, request)
        if placement is not None:
            snap.assume(placement)
    return PLACEMENTS / (time.perf_counter() - started)


def cycle_seconds(nodes: list, pods: list, policy: str, seed: int) -> tuple[float, float, int]:
    """Wall-clock and CPU seconds for one run_cycle over PENDING workloads, and how many it bound."""
    rng = random.Random(seed)
    queues = {f"team-{k}": QueueSpec(f"team-{k}", ResourceVector(0, 0, 1_000_000), weight=1.0) for k in range(4)}
    requests = [pods[rng.randrange(len(pods))].request() for _ in range(PENDING)]
    pending = [
        PendingWorkload(f"w{i}", f"team-{i % 4}", (ReplicaGroup("worker", 1, r),),
                        priority=rng.choice((0, 0, 0, 10)), submit_time=float(i))
        for i, r in enumerate(requests)
    ]
    snap = ClusterSnapshot(nodes)
    policy_object = make_policy(policy, random.Random(seed), default_target(pods))
    started, cpu = time.perf_counter(), time.process_time()
    decisions = run_cycle(snap, pending, [], queues, SchedulerProfile(policy=policy), 0.0, policy=policy_object)
    return time.perf_counter() - started, time.process_time() - cpu, len(decisions.binds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--policies", default="bestfit,fgd,binpack,spread")
    parser.add_argument("--cycle-only", action="store_true", help="skip the placements-per-second measure")
    args = parser.parse_args()
    nodes = load_nodes(TRACES / "openb_node_list_gpu_node.csv")
    pods = load_pods(TRACES / "openb_pod_list_default.csv")
    print("| policy | placements/s (median) | cycle over 10,000 pending: s (median) | CPU s (median) | bound |")
    print("|---|---:|---:|---:|---:|")
    for policy in args.policies.split(","):
        rates = [] if args.cycle_only else [placements_per_second(nodes, pods, policy, s) for s in range(args.repeats)]
        rate = f"{statistics.median(rates):,.0f}" if rates else "-"
        cycles = [cycle_seconds(nodes, pods, policy, seed) for seed in range(args.repeats)]
        print(f"| {policy} | {rate} | {statistics.median(c[0] for c in cycles):.2f} | "
              f"{statistics.median(c[1] for c in cycles):.2f} | {statistics.median(c[2] for c in cycles):,.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
