"""Costs of the GPU layer that users and the server pay on every replica or every sample.

- startup:  `python -c pass` with and without the injected sitecustomize directory on PYTHONPATH (every
            Python process of a replica on a time-sliced GPU pays the difference);
- torch:    `python -c "import torch"` with and without it (the hook wraps torch's import);
- sample:   one sampling pass of a scripted node (the fake NVML read by the real NvmlBackend: both process
            lists per GPU) and one GpuMonitor.observe of it, for a node of G GPUs with P processes
            attributed to R replicas;
- marker:   the same observe when NVML's pids are of another PID namespace: the monitor scans this
            machine's /proc for replica markers (its cost grows with the number of processes here);
- real:     with --real, one sampling pass of this machine's own cards through the driver's NVML (what the
            server's sampler pays per node on hardware).

    .venv/bin/python benchmarks/gpu/bench_gpu_layer.py [--runs 30] [--gpus 8] [--processes 64] [--real]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from gpupool.gpu.attribution import ProcView
from gpupool.gpu.fake import FakeBackend
from gpupool.gpu.fake_nvml import HOST_PID_OFFSET
from gpupool.gpu.monitor import GpuAllocation, GpuMonitor, ReplicaKey
from gpupool.gpu.nvml import NvmlBackend, load_pynvml
from gpupool.gpu.sharing import SharingConfig, install_sitecustomize


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks."""
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def time_process(code: str, env: dict[str, str], runs: int) -> list[float]:
    """Wall time in ms of `python -c code`, `runs` times."""
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        samples.append((time.perf_counter() - began) * 1000)
    return samples


def time_sampling(gpus: int, processes: int, runs: int) -> tuple[list[float], list[float], list[float]]:
    """(sample ms, observe ms, observe ms with host pids) per pass for a scripted node."""
    backend = FakeBackend({"gpus": [{"model": "NVIDIA A100-SXM4-80GB", "memory": "80GiB", "count": gpus,
                                     "nvlink": "board", "utilization": 50}]}, epoch=0.0)
    backend.discover()
    owners, allocations = {}, []
    for k in range(processes):
        key = ReplicaKey(f"w{k % 16}", k // 16)
        owners[10_000 + k] = key
        backend.add_process(10_000 + k, k % gpus, "1GiB")
        allocations.append(GpuAllocation(key, k % gpus, 125, 10240))
    monitor = GpuMonitor("bench", resolve=lambda pid: (None, None))
    foreign = GpuMonitor("bench", resolve=lambda pid: (None, None), view=ProcView())
    sample_ms, observe_ms, marker_ms = [], [], []
    for k in range(runs):
        began = time.perf_counter()
        sample = backend.sample(float(k * 5))
        middle = time.perf_counter()
        monitor.observe(sample, allocations, owners)
        sample_ms.append((middle - began) * 1000)
        observe_ms.append((time.perf_counter() - middle) * 1000)
        hidden = replace(sample, processes=tuple(replace(p, pid=p.pid + HOST_PID_OFFSET) for p in sample.processes))
        began = time.perf_counter()
        foreign.observe(hidden, allocations, owners)
        marker_ms.append((time.perf_counter() - began) * 1000)
    return sample_ms, observe_ms, marker_ms


def time_real_sampling(runs: int) -> tuple[str, list[float]]:
    """(what was sampled, ms per pass) for this machine's cards through the real NVML."""
    nvml = load_pynvml()
    backend = NvmlBackend(lambda: nvml)
    inventory = backend.discover()
    if not inventory.gpus:
        raise SystemExit(f"--real: NVML found no GPU here ({inventory.unavailable})")
    models = sorted({g.name for g in inventory.gpus})
    first = backend.sample(time.time())  # the first pass opens handles and registers events
    print(f"first real sample: {first.gpus[0]}; {len(first.processes)} processes", file=sys.stderr)
    timings = []
    for _ in range(runs):
        began = time.perf_counter()
        backend.sample(time.time())
        timings.append((time.perf_counter() - began) * 1000)
    backend.close()
    return f"{len(inventory.gpus)} x {', '.join(models)}, driver {inventory.driver_version}", timings


def row(name: str, samples: list[float], digits: int = 1) -> str:
    """A markdown table row: p50, p95, mean (milliseconds, `digits` after the point)."""
    return (f"| {name} | {percentile(samples, 50):.{digits}f} | {percentile(samples, 95):.{digits}f} | "
            f"{statistics.fmean(samples):.{digits}f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--processes", type=int, default=64)
    parser.add_argument("--real", action="store_true", help="also time sampling this machine's GPUs via NVML")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        folder = install_sitecustomize(SharingConfig(Path(home)))
        plain = {"PATH": os.environ.get("PATH", ""), "HOME": home}
        hooked = {**plain, "PYTHONPATH": str(folder), "GPUPOOL_GPU_MEMORY_LIMIT_MIB": "10240"}
        rows = [
            row("python -c pass", time_process("pass", plain, args.runs)),
            row("python -c pass, with the hook", time_process("pass", hooked, args.runs)),
            row("import torch", time_process("import torch", plain, max(5, args.runs // 3))),
            row("import torch, with the hook", time_process("import torch", hooked, max(5, args.runs // 3))),
        ]
    sample_ms, observe_ms, marker_ms = time_sampling(args.gpus, args.processes, args.runs * 10)
    rows += [row(f"sample ({args.gpus} GPUs, {args.processes} processes)", sample_ms),
             row("observe (same)", observe_ms),
             row("observe, pids of another namespace (/proc marker scan)", marker_ms)]
    if args.real:
        cards, real_ms = time_real_sampling(args.runs * 10)
        rows.append(row(f"sample, real NVML ({cards})", real_ms, digits=3))
    processes_here = sum(1 for entry in Path("/proc").iterdir() if entry.name.isdigit())
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{processes_here} processes in /proc")
    print("| measure | p50 (ms) | p95 (ms) | mean (ms) |\n|---|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
