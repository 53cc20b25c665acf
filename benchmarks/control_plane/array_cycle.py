"""Job arrays: what a pending 10,000-task array costs each scheduling cycle.

Builds the server in this process (its app and lifespan, the fake executor: nothing is started; workers off,
so only the cycles this script runs happen) with one node of 8 A100s, fills the GPUs with 8 running jobs and
keeps `--jobs` more waiting, then times `SchedulingLoop.step()` (one whole cycle: load, decide, write the
reasons) `--cycles` times in each of three states: the jobs alone; plus an array of `--tasks` one-GPU tasks
capped at 8 at once; plus the same array uncapped (every task pending and offered). Prints a JSON summary
(median and p95 per state, milliseconds).

    python benchmarks/control_plane/array_cycle.py [--tasks 10000] [--cycles 10] [--postgres-url URL]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import fresh_database  # the script's own directory (on sys.path above)

from gpupool.executors.fake import RUN_FOREVER, FakeExecutor
from gpupool.server.app import create_app
from gpupool.server.settings import Settings

JOB = "name: job{k}\ncommand: sleep 600\nresources: {{gpu: 1, cpu: 1, memory: 1GiB}}\n"
ARRAY = "name: frames\narray: 0-{last}{cap}\ncommand: sleep 600\nresources: {{gpu: 1, cpu: 1, memory: 1GiB}}\n"


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Cycle times in the three states of the module docstring."""
    with (
        tempfile.TemporaryDirectory(prefix="gpupool-cycle-") as tmp,
        fresh_database(args.postgres_url, Path(tmp)) as url,
    ):
        settings = Settings(
            home=Path(tmp),
            database_url=url,
            node_name="bench",
            node_cpus=64,
            node_memory="512GiB",
            gpus="8xA100-80GB",
            workers=False,
            log_level="warning",
            multi_user=False,
            trust_users=True,
        )
        app = create_app(settings, executor=FakeExecutor(default=RUN_FOREVER))
        with TestClient(app) as http:
            headers = {"Authorization": f"Bearer {settings.token_file.read_text().strip()}"}
            loop = app.state.services.scheduling_loop

            def submit(spec: str) -> int:
                answer = http.post("/api/v1/workloads", json={"spec_yaml": spec}, headers=headers)
                answer.raise_for_status()
                return int(answer.json()["workload"]["id"])

            for k in range(8 + args.jobs):
                submit(JOB.format(k=k))
            loop.step()  # the first 8 are placed; the rest wait
            out = {"jobs alone": _cycles(loop, args.cycles)}
            capped = submit(ARRAY.format(last=args.tasks - 1, cap="%8"))
            out[f"+ {args.tasks}-task array capped %8"] = _cycles(loop, args.cycles)
            http.post(f"/api/v1/workloads/{capped}/cancel", headers=headers).raise_for_status()
            submit(ARRAY.format(last=args.tasks - 1, cap=""))
            out[f"+ {args.tasks}-task array uncapped"] = _cycles(loop, args.cycles)
    return {
        "database": "postgresql" if args.postgres_url else "sqlite",
        "waiting_jobs": args.jobs,
        "tasks": args.tasks,
        "cycle_ms": out,
    }


def _cycles(loop: Any, count: int) -> dict[str, float]:
    loop.step()  # a first cycle after a change writes every new reason; the steady state is measured
    took = []
    for _ in range(count):
        began = time.perf_counter()
        loop.step()
        took.append((time.perf_counter() - began) * 1000)
    ordered = sorted(took)
    return {"p50": round(statistics.median(took), 1), "p95": round(ordered[int(0.95 * (len(ordered) - 1))], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=100, help="jobs waiting beside the array")
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--postgres-url", default=None, help="a PostgreSQL server to create a database on")
    print(json.dumps(measure(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
