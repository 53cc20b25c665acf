"""What one pass of the server's GPU sampler costs: a pool of N simulated nodes of G GPUs each (fake NVML read
by the real NvmlBackend), every card busy with running replicas, and `GpuSampler.step()` timed: store read,
per-node sample and observe, metrics update (nothing to record: no over-use, idle or health events).

    .venv/bin/python benchmarks/gpu/bench_sampler_step.py [--nodes 8] [--gpus 8] [--runs 50] [--database-url URL]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

from gpupool.executors.fake import RUN_FOREVER, FakeExecutor
from gpupool.server.app import create_app
from gpupool.server.context import Services
from gpupool.server.settings import Settings


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks."""
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def fill_the_pool(client: TestClient, services: Services, replicas: int) -> None:
    """Submit `replicas` one-GPU jobs and run the scheduler and reconciler until they all run."""
    for k in range(replicas):
        response = client.post("/api/v1/workloads", json={"spec": {
            "name": f"j{k}", "command": "x", "resources": {"cpu": 0.1, "memory": "128MiB", "gpu": 1}}})
        response.raise_for_status()
    assert services.scheduling_loop is not None and services.reconciler_loop is not None
    for _ in range(5):
        services.scheduling_loop.step()
        services.reconciler_loop.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temporary directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(home=Path(tmp), database_url=args.database_url or f"sqlite:///{tmp}/bench.db",
                            gpus=f"{args.gpus}xA100-80GB", gpu_mode="exclusive", nodes=args.nodes,
                            node_name="n", node_cpus=64, node_memory="512GiB", workers=False, log_level="warning")
        app = create_app(settings, executor=FakeExecutor(default=RUN_FOREVER))
        with TestClient(app) as client:
            client.headers["Authorization"] = f"Bearer {settings.token_file.read_text().strip()}"
            services: Services = app.state.services
            fill_the_pool(client, services, args.nodes * args.gpus)
            assert services.sampler is not None
            step = services.sampler.step
            step()  # warm-up (also the first MPS check)
            times = []
            for _ in range(args.runs):
                began = time.perf_counter()
                step()
                times.append((time.perf_counter() - began) * 1000)
            running = sum(1 for g in client.get("/api/v1/metrics/gpus").json() if g["users"])
    database = "PostgreSQL" if args.database_url else "SQLite"
    print(f"{platform.machine()}, Python {sys.version.split()[0]}, {database}: {args.nodes} nodes x {args.gpus} "
          f"GPUs, {running} GPUs held by running replicas, {args.runs} passes")
    print("| measure | p50 (ms) | p95 (ms) | mean (ms) |")
    print("|---|---:|---:|---:|")
    print(f"| sampler step | {percentile(times, 50):.1f} | {percentile(times, 95):.1f} | "
          f"{statistics.fmean(times):.1f} |")


if __name__ == "__main__":
    main()
