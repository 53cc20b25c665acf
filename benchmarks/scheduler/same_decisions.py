"""Check that a change to the scheduler's speed changed no decision.

    .venv/bin/python benchmarks/scheduler/same_decisions.py --record   # before the change: writes the digests
    .venv/bin/python benchmarks/scheduler/same_decisions.py            # after it: compares, exit 1 on a difference

Each scenario runs `run_cycle` and digests everything it decided (binds with their nodes and cards, preemptions,
reservations, pending reasons and positions, in order). Scenarios: the cycle of bench_scheduler.py (10,000
pending from the openb default list on the empty 1,213-node cluster, seed 0) per policy; generated variants
of it on other openb pod lists (gpushare40, multigpu50) with gangs of 1-4 replicas, a queue limit, priorities
and run-time limits, run as two cycles (the second on the first's binds, so that it places on a part-full
pool and makes backfill reservations); and a smaller copy of bench_preemption.py's cycle. `--dump DIR` writes
each scenario's decisions as text for a diff.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

from gpupool.domain.queues import QueueSpec
from gpupool.domain.resources import ResourceVector
from gpupool.scheduler.cycle import run_cycle
from gpupool.scheduler.decisions import Decisions
from gpupool.scheduler.placement.registry import make_policy
from gpupool.scheduler.profile import SchedulerProfile
from gpupool.scheduler.snapshot import ClusterSnapshot
from gpupool.scheduler.types import PendingWorkload, ReplicaGroup, RunningWorkload
from gpupool.sim.inflation import default_target
from gpupool.sim.traces.openb import load_nodes, load_pods

HERE = Path(__file__).resolve().parent
TRACES = HERE.parents[0] / "traces" / "alibaba-openb-2023"
RECORD = HERE / "same_decisions.json"
VARIANT_PENDING = 4_000  # half the variant's pods per cycle: enough that the pool fills and reasons repeat


def _text(decisions: Decisions) -> str:
    lines = [f"bind {b.workload_id} {b.placements!r}" for b in decisions.binds]
    lines += [f"preempt {p.victim_id} {p.preemptor_id} {p.reason}" for p in decisions.preemptions]
    lines += [f"reserve {r.workload_id} {r.start_time!r} {r.placements!r}" for r in decisions.reservations]
    lines += [f"pending {p.workload_id} {p.position} {p.reason} {p.nominated!r}" for p in decisions.pending]
    return "\n".join(lines)


def bench_cycle(policy: str) -> str:
    """The cycle that bench_scheduler.py times (seed 0)."""
    nodes = load_nodes(TRACES / "openb_node_list_gpu_node.csv")
    pods = load_pods(TRACES / "openb_pod_list_default.csv")
    rng = random.Random(0)
    queues = {f"team-{k}": QueueSpec(f"team-{k}", ResourceVector(0, 0, 1_000_000), weight=1.0) for k in range(4)}
    requests = [pods[rng.randrange(len(pods))].request() for _ in range(10_000)]
    pending = [
        PendingWorkload(
            f"w{i}",
            f"team-{i % 4}",
            (ReplicaGroup("worker", 1, r),),
            priority=rng.choice((0, 0, 0, 10)),
            submit_time=float(i),
        )
        for i, r in enumerate(requests)
    ]
    policy_object = make_policy(policy, random.Random(0), default_target(pods))
    decisions = run_cycle(
        ClusterSnapshot(nodes), pending, [], queues, SchedulerProfile(policy=policy), 0.0, policy=policy_object
    )
    return _text(decisions)


def variant(pod_list: str, policy: str, seed: int) -> str:
    """Two cycles on a generated variant: gangs, a limited queue, priorities and run-time limits."""
    nodes = load_nodes(TRACES / "openb_node_list_gpu_node.csv")
    pods = load_pods(TRACES / pod_list)
    rng = random.Random(seed)
    queues = {
        "a": QueueSpec("a", ResourceVector(0, 0, 2_000_000), weight=2.0),
        "b": QueueSpec("b", ResourceVector(0, 0, 500_000), limit=ResourceVector(10**9, 10**12, 1_500_000)),
        "c": QueueSpec("c", ResourceVector()),
    }

    def workloads(prefix: str, start: float) -> list[PendingWorkload]:
        made = []
        for i in range(VARIANT_PENDING):
            count = rng.choice((1, 1, 1, 1, 2, 4))
            made.append(
                PendingWorkload(
                    f"{prefix}{i}",
                    rng.choice("abc"),
                    (ReplicaGroup("worker", count, pods[rng.randrange(len(pods))].request()),),
                    priority=rng.choice((0, 0, 5, 10)),
                    submit_time=start + i,
                    max_runtime_s=rng.choice((None, 600.0, 3600.0)),
                )
            )
        return made

    profile = SchedulerProfile(policy=policy)
    policy_object = make_policy(policy, random.Random(seed), default_target(pods))
    snap = ClusterSnapshot(nodes)
    first_pending = workloads("x", 0.0)
    first = run_cycle(snap, first_pending, [], queues, profile, 0.0, policy=policy_object)
    by_id = {w.id: w for w in first_pending}
    running = [
        RunningWorkload(
            b.workload_id,
            by_id[b.workload_id].queue,
            b.placements,
            by_id[b.workload_id].priority,
            0.0,
            True,
            by_id[b.workload_id].max_runtime_s,
        )
        for b in first.binds
    ]
    for r in running:
        snap.assume_all(r.placements)
    still = [w for w in first_pending if w.id not in {b.workload_id for b in first.binds}]
    second = run_cycle(snap, still + workloads("y", 10_000.0), running, queues, profile, 60.0, policy=policy_object)
    return _text(first) + "\n----\n" + _text(second)


def preemption_cycle() -> str:
    """bench_preemption.py's cycle at a fifth of its size (200 nodes, 2,000 pending)."""
    sys.path.insert(0, str(HERE))
    bp = importlib.import_module("bench_preemption")

    bp.NODES, bp.PENDING = 200, 2_000
    nodes, runs, waiting = bp.pool(), bp.running(0), bp.pending()
    snap = ClusterSnapshot(nodes)
    for r in runs:
        snap.assume_all(r.placements)
    profile = SchedulerProfile(policy="bestfit", preemption=True)
    return _text(run_cycle(snap, waiting, runs, {}, profile, bp.NOW))


SCENARIOS: dict[str, Callable[[], str]] = {
    "bench-fgd": lambda: bench_cycle("fgd"),
    "bench-bestfit": lambda: bench_cycle("bestfit"),
    "gpushare40-fgd": lambda: variant("openb_pod_list_gpushare40.csv", "fgd", 1),
    "gpushare40-bestfit": lambda: variant("openb_pod_list_gpushare40.csv", "bestfit", 1),
    "multigpu50-fgd": lambda: variant("openb_pod_list_multigpu50.csv", "fgd", 2),
    "multigpu50-binpack": lambda: variant("openb_pod_list_multigpu50.csv", "binpack", 2),
    "preemption-bestfit": preemption_cycle,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="write the digests instead of comparing")
    parser.add_argument("--only", default="", help="comma-separated scenario names (default: all)")
    parser.add_argument("--dump", type=Path, default=None, help="write each scenario's decisions here")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(SCENARIOS)
    recorded = json.loads(RECORD.read_text()) if RECORD.exists() else {}
    differ = []
    for name in names:
        text = SCENARIOS[name]()
        digest = hashlib.sha256(text.encode()).hexdigest()
        if args.dump is not None:
            args.dump.mkdir(parents=True, exist_ok=True)
            (args.dump / f"{name}.txt").write_text(text)
        if args.record:
            recorded[name] = digest
        verdict = "recorded" if args.record else ("same" if recorded.get(name) == digest else "DIFFERENT")
        if verdict == "DIFFERENT":
            differ.append(name)
        print(f"{name}: {text.count(chr(10)) + 1} decisions, {verdict}", flush=True)
    if args.record:
        RECORD.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
