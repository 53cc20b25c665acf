"""One preemption-heavy scheduling cycle: 1,000 nodes x 8 GPUs, 90 % full of priority-0 work, 10,000 pending
workloads of higher priority.

    .venv/bin/python benchmarks/scheduler/bench_preemption.py [--repeats 3] [--cap N | --no-cap] [--no-preemption]

The pool: 1,000 nodes of 8 A100-80GB, 64 CPU, 512 GiB. Running: 7,200 one-GPU workloads of priority 0 in one
queue (started long enough ago to be preemptible) on 90 % of the cards, chosen at random (seeded). Pending:
10,000 one-GPU workloads of priority 10 in the same queue. One `run_cycle` with the bestfit policy; prints the
median CPU time (process time: the machine may be shared) over --repeats runs, and how many binds and
preemptions that cycle decided.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from gpupool.domain.nodes import Gpu, Node
from gpupool.domain.resources import ReplicaRequest, parse_gpu
from gpupool.scheduler.cycle import run_cycle
from gpupool.scheduler.profile import SchedulerProfile
from gpupool.scheduler.snapshot import ClusterSnapshot
from gpupool.scheduler.types import GpuAssignment, PendingWorkload, ReplicaGroup, ReplicaPlacement, RunningWorkload

NODES, CARDS, FULL, PENDING = 1_000, 8, 0.9, 10_000
NOW = 100_000.0
GIB = 1024


def pool() -> list[Node]:
    """NODES nodes of CARDS A100-80GB cards, 64 CPU, 512 GiB."""
    return [Node(f"n{i:04}", 64_000, 512 * GIB,
                 tuple(Gpu(j, "A100-80GB", 80 * GIB) for j in range(CARDS)))
            for i in range(NODES)]


def running(seed: int) -> list[RunningWorkload]:
    """FULL of all cards, chosen at random (seeded), each held by a 1-GPU priority-0 workload."""
    rng = random.Random(seed)
    cards = [(i, j) for i in range(NODES) for j in range(CARDS)]
    rng.shuffle(cards)
    taken = sorted(cards[: int(FULL * len(cards))])
    return [RunningWorkload(f"r{k:05}", "team", (ReplicaPlacement(f"n{i:04}", 1000, GIB,
                                                                  (GpuAssignment(j, 1000, 80 * GIB),)),),
                            priority=0, start_time=rng.uniform(0, NOW / 2))
            for k, (i, j) in enumerate(taken)]


def pending() -> list[PendingWorkload]:
    """PENDING 1-GPU workloads of priority 10."""
    request = ReplicaRequest(1000, GIB, parse_gpu(1))
    return [PendingWorkload(f"p{k:05}", "team", (ReplicaGroup("worker", 1, request),), priority=10,
                            submit_time=float(k)) for k in range(PENDING)]


def one_cycle(profile: SchedulerProfile, seed: int) -> tuple[float, int, int]:
    """(seconds, binds, preemptions) of one run_cycle."""
    nodes, runs, waiting = pool(), running(seed), pending()
    snap = ClusterSnapshot(nodes)
    for r in runs:
        snap.assume_all(r.placements)
    started = time.process_time()
    decisions = run_cycle(snap, waiting, runs, {}, profile, NOW)
    return time.process_time() - started, len(decisions.binds), len(decisions.preemptions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cap", type=int, default=None, help="max_preemptions_per_cycle (default: the profile's)")
    parser.add_argument("--no-cap", action="store_true", help="no cap on preemptions per cycle")
    parser.add_argument("--no-preemption", action="store_true")
    args = parser.parse_args()
    settings: dict[str, object] = {"policy": "bestfit", "preemption": not args.no_preemption}
    if args.no_cap:
        settings["max_preemptions_per_cycle"] = 10**9
    elif args.cap is not None:
        settings["max_preemptions_per_cycle"] = args.cap
    profile = SchedulerProfile(**settings)  # type: ignore[arg-type]
    runs = [one_cycle(profile, seed) for seed in range(args.repeats)]
    print(f"settings {settings}: CPU s per cycle (median of {args.repeats}) "
          f"{statistics.median(r[0] for r in runs):.2f}; binds {runs[0][1]:,}; preemptions {runs[0][2]:,}")


if __name__ == "__main__":
    main()
