"""Random multi-cycle scenarios in bulk: the generator of tests/unit/scheduler/test_multi_cycle_random.py over many
seeds, with the waits, the broken reservation promises and the invariant violations summed.

    python benchmarks/scheduler/multi_cycle_sweep.py reservations 1200 1400  # one priority, bounded, no preemption
    python benchmarks/scheduler/multi_cycle_sweep.py invariants 200 400      # priorities, preemption, unbounded
    python benchmarks/scheduler/multi_cycle_sweep.py overloaded 0 100        # the second family: bigger, bursts
    python benchmarks/scheduler/multi_cycle_sweep.py churn 0 100             # nodes leave, shrink, are cordoned
    python benchmarks/scheduler/multi_cycle_sweep.py mixed 0 100             # MIG, models, selectors, roles, churn

(The tests run seeds 1000-1005 of the first kind, 0-5 of the second, 0-1 of the overloaded family and 0-3 of
the churn and mixed families.)

Prints one line: the mean and median over scenarios of the mean wait (first start - arrival), the mean makespan
(last finish), the promises kept late (a reserved head starting more than a cycle after its first promise, or
never), the violations the cycle driver recorded (each also on stderr, with its seed), and p95, p99 and max of
every workload's wait. Runs on older code too (PYTHONPATH to another src/).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.unit.scheduler.test_multi_cycle_random import churn_scenario, mixed_scenario, overloaded_scenario, scenario


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["reservations", "invariants", "overloaded", "churn", "mixed"])
    parser.add_argument("first", type=int)
    parser.add_argument("last", type=int, help="exclusive")
    parser.add_argument("--hold-after-s", help="override the scenarios' hold_after_s: seconds, or 'none' (no holds)")
    args = parser.parse_args()
    waits, every_wait, makespans, late, kinds, lost = [], [], [], 0, Counter[str](), 0
    for seed in range(args.first, args.last):
        if args.kind == "reservations":
            driver = scenario(seed, bounded=True, preemption=False, priorities=(0,))
        elif args.kind == "invariants":
            driver = scenario(seed, bounded=False, preemption=True, priorities=(0, 0, 5, 10))
        elif args.kind == "churn":
            driver = churn_scenario(seed)
        elif args.kind == "mixed":
            driver = mixed_scenario(seed)
        else:
            driver = overloaded_scenario(seed)
        if args.hold_after_s is not None:
            hold = None if args.hold_after_s == "none" else float(args.hold_after_s)
            driver.profile = replace(driver.profile, hold_after_s=hold)
        arrivals = {a.workload.id: a.time for a in driver.arrivals}
        record = driver.run_until_idle(max_cycles={"overloaded": 3000, "churn": 1500, "mixed": 800}.get(args.kind, 600))
        for v in record.violations:
            print(f"seed {seed}: {v}", file=sys.stderr)
        started = [start - at for wid, at in arrivals.items() if (start := record.start(wid)) is not None]
        if started:  # (a pool where nothing can start has no wait to count)
            waits.append(statistics.mean(started))
        every_wait += started
        makespans.append(max(record.finished.values(), default=0.0))
        lost += sum(record.lost.values())
        late += sum(1 for wid, promise in record.first_promise.items()
                    if (start := record.start(wid)) is None or start > promise + driver.cycle_s)
        kinds.update("reclaimed below a guarantee" if "reclaimed" in v else "preempted again before starting"
                     if "again" in v else "other" for v in record.violations)
    print(f"{args.kind} seeds {args.first}-{args.last - 1}: mean wait {statistics.mean(waits):.1f} s, median "
          f"{statistics.median(waits):.1f} s, mean makespan {statistics.mean(makespans):.1f} s, promises kept late "
          f"{late}, violations {sum(kinds.values())} {dict(kinds)}, lost with a node {lost}; all {len(every_wait)} "
          f"waits: p95 {_rank(every_wait, 0.95):.0f} s, p99 {_rank(every_wait, 0.99):.0f} s, "
          f"max {max(every_wait):.0f} s")


def _rank(values: list[float], q: float) -> float:
    """The value at rank q (0-1) of `values` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


if __name__ == "__main__":
    main()
