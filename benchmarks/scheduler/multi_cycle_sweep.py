"""Random multi-cycle scenarios in bulk: the generator of tests/unit/scheduler/test_multi_cycle_random.py over many
seeds, with the waits, the broken reservation promises and the invariant violations summed.

    python benchmarks/scheduler/multi_cycle_sweep.py reservations 1200 1400  # one priority, bounded, no preemption
    python benchmarks/scheduler/multi_cycle_sweep.py invariants 200 400      # priorities, preemption, unbounded

(The tests run seeds 1000-1005 of the first kind and 0-5 of the second.)

Prints one line: the mean and median over scenarios of the mean wait (first start - arrival), the mean makespan
(last finish), the promises kept late (a reserved head starting more than a cycle after its first promise, or
never) and the violations the cycle driver recorded. Runs on older code too (PYTHONPATH to another src/).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.unit.scheduler.test_multi_cycle_random import scenario


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["reservations", "invariants"])
    parser.add_argument("first", type=int)
    parser.add_argument("last", type=int, help="exclusive")
    args = parser.parse_args()
    waits, makespans, late, kinds = [], [], 0, Counter[str]()
    for seed in range(args.first, args.last):
        if args.kind == "reservations":
            driver = scenario(seed, bounded=True, preemption=False, priorities=(0,))
        else:
            driver = scenario(seed, bounded=False, preemption=True, priorities=(0, 0, 5, 10))
        arrivals = {a.workload.id: a.time for a in driver.arrivals}
        record = driver.run_until_idle(max_cycles=600)
        started = [start - at for wid, at in arrivals.items() if (start := record.start(wid)) is not None]
        waits.append(statistics.mean(started))
        makespans.append(max(record.finished.values(), default=0.0))
        late += sum(1 for wid, promise in record.first_promise.items()
                    if (start := record.start(wid)) is None or start > promise + driver.cycle_s)
        kinds.update("reclaimed below a guarantee" if "reclaimed" in v else "preempted again before starting"
                     if "again" in v else "other" for v in record.violations)
    print(f"{args.kind} seeds {args.first}-{args.last - 1}: mean wait {statistics.mean(waits):.1f} s, median "
          f"{statistics.median(waits):.1f} s, mean makespan {statistics.mean(makespans):.1f} s, promises kept late "
          f"{late}, violations {sum(kinds.values())} {dict(kinds)}")


if __name__ == "__main__":
    main()
