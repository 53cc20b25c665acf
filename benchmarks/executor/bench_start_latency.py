"""Start-to-running latency of trivial replicas on the local executor.

For each of N replicas (one after the other) it measures, from the moment `start()` is called:
- start_call: until `start()` returns (state directory, lock, log file, supervisor process created);
- running:    until `poll()` first reports RUNNING (the supervisor has started `bash -lc COMMAND`);
- first_line: until the command's first output line is in the log (login files read, command running).
`poll` is called every millisecond. Each replica runs `echo up; sleep 30` and is stopped afterwards.

    .venv/bin/python benchmarks/executor/bench_start_latency.py [--replicas 100] [--home DIR]

`--home` sets HOME for the replicas (default: a fresh empty directory, so only /etc/profile is read);
pass your real home to include your own login files.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from gpupool.executors.base import ReplicaLaunch
from gpupool.executors.local import LocalExecutor


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks."""
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def measure_one(executor: LocalExecutor, launch: ReplicaLaunch) -> tuple[float, float, float]:
    """(start_call, running, first_line) in milliseconds for one replica, which is then stopped."""
    began = time.perf_counter()
    handle = executor.start(launch)
    start_call = time.perf_counter() - began
    while executor.poll(handle).state != "running":
        time.sleep(0.001)
    running = time.perf_counter() - began
    log = Path(handle["log_path"])
    while not log.exists() or log.stat().st_size == 0:
        time.sleep(0.001)
    first_line = time.perf_counter() - began
    executor.stop(handle, grace_s=1)
    return start_call * 1000, running * 1000, first_line * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=100)
    parser.add_argument("--home", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpupool-bench-") as tmp:
        base = Path(tmp)
        home = args.home or base / "home"
        home.mkdir(exist_ok=True)
        (base / "work").mkdir()
        executor = LocalExecutor(base / "executor", base_env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                                             "HOME": str(home), "LANG": "C.UTF-8"})
        rows = [measure_one(executor, ReplicaLaunch(f"bench{i}", 0, "worker", "echo up; sleep 30", {},
                                                    base / "work", base / "logs" / f"bench{i}"))
                for i in range(args.replicas)]
        time.sleep(1.5)  # let the stopped replicas end before the directory goes away
        executor.close()
    print(f"{args.replicas} replicas, {platform.machine()}, {os.cpu_count()} CPUs, HOME={home}")
    print("| measure | p50 (ms) | p95 (ms) | mean (ms) |")
    print("|---|---:|---:|---:|")
    for name, column in zip(("start() returns", "poll() says running", "first output line"), zip(*rows, strict=True),
                            strict=True):
        samples = list(column)
        print(f"| {name} | {percentile(samples, 50):.1f} | {percentile(samples, 95):.1f} | "
              f"{statistics.fmean(samples):.1f} |")


if __name__ == "__main__":
    main()
