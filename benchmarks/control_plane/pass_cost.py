"""What one scheduling pass costs with 0, 100 and 10,000 workloads waiting: when nothing is new, and when one
workload was submitted since the last pass.

Builds the server in this process (its app and lifespan, the fake executor: nothing is started; workers off,
so only the passes this script runs happen) with one node of 8 A100s, fills the GPUs with 8 running jobs,
moves its clock past their minimum run time, then for each count of waiting one-GPU jobs (none fits):
- "nothing new": times `SchedulingLoop.step()` `--passes` times after a settling pass;
- "one new submit": `--passes` times, submits one more one-GPU job (over HTTP, not timed; the clock moves on a
  second per submit), then times the next `step()`, and runs one settling pass after it (untimed).
The waiting jobs beyond 100 new ones at a time are copies of a submitted job's row written with one bulk INSERT
(10,000 submits over HTTP would take minutes and are not what is measured). Prints a JSON summary (median
and p95 of the wall time per case, and the median CPU time of the thread that runs the step, milliseconds: on
SQLite the database's work is in that thread too, and the CPU time is the steadier figure on a busy machine).
Runs on older code too (PYTHONPATH to another commit's src/).

    python benchmarks/control_plane/pass_cost.py [--passes 15] [--postgres-url URL]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from fastapi.testclient import TestClient
from sqlalchemy import Table, insert, select

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import fresh_database  # the script's own directory (on sys.path above)

from gpupool.executors.fake import RUN_FOREVER, FakeExecutor
from gpupool.server.app import create_app
from gpupool.server.settings import Settings
from gpupool.store.orm import WorkloadRow

JOB = "name: job{k}\ncommand: sleep 600\nresources: {{gpu: 1, cpu: 1, memory: 1GiB}}\n"
COUNTS = (0, 100, 10_000)
COPIED = ("name", "kind", "project_id", "queue", "user_id", "spec", "status", "priority", "replica_count",
          "attempt", "retries_used", "preemptions", "message")


class Clock:
    """The server's clock, moved on by the script."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _ms(samples: list[tuple[float, float]]) -> dict[str, float]:
    """Wall time p50 and p95, and the median CPU time, of (wall, CPU) samples in seconds, as milliseconds."""
    ordered = sorted(wall for wall, _ in samples)
    return {"p50": round(statistics.median(ordered) * 1000, 2),
            "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 2),
            "cpu p50": round(statistics.median(cpu for _, cpu in samples) * 1000, 2)}


def _timed(loop: Any) -> tuple[float, float]:
    """One step's wall time and the CPU time of this thread during it (the step runs here; on SQLite the
    database's work is in it too, on PostgreSQL the server's is not), in seconds."""
    began, began_cpu = time.perf_counter(), time.thread_time()
    loop.step()
    return time.perf_counter() - began, time.thread_time() - began_cpu


def _copy_waiting(db: Any, template_id: int, count: int, now: float) -> None:
    """`count` more pending rows like the workload `template_id` (one bulk INSERT)."""
    with db.session() as session:
        template = session.scalars(select(WorkloadRow).where(WorkloadRow.id == template_id)).one()
        row = {c: getattr(template, c) for c in COPIED} | {"submitted_at": now, "updated_at": now}
        session.execute(insert(cast(Table, WorkloadRow.__table__)), [row] * count)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Pass times in the cases of the module docstring."""
    with (
        tempfile.TemporaryDirectory(prefix="gpupool-pass-") as tmp,
        fresh_database(args.postgres_url, Path(tmp)) as url,
    ):
        settings = Settings(home=Path(tmp), database_url=url, node_name="bench", node_cpus=64, node_memory="512GiB",
                            gpus="8xA100-80GB", workers=False, log_level="warning", multi_user=False,
                            trust_users=True)
        clock = Clock()
        app = create_app(settings, executor=FakeExecutor(default=RUN_FOREVER), clock=clock)
        out: dict[str, Any] = {}
        with TestClient(app) as http:
            headers = {"Authorization": f"Bearer {settings.token_file.read_text().strip()}"}
            services = app.state.services
            loop = services.scheduling_loop

            def submit(k: int) -> int:
                clock.now += 1.0  # a second apart: each new job waits behind those before it
                answer = http.post("/api/v1/workloads", json={"spec_yaml": JOB.format(k=k)}, headers=headers)
                answer.raise_for_status()
                return int(answer.json()["workload"]["id"])

            for k in range(8):
                submit(k)
            loop.step()  # the 8 GPUs are taken
            clock.now += settings.min_runtime_s + 1
            waiting, serial = 0, 100
            for count in COUNTS:
                needed = count - waiting
                if needed > 0:
                    first = submit(serial)
                    for k in range(1, min(needed, 100)):
                        submit(serial + k)
                    serial += min(needed, 100)
                    if needed > 100:
                        _copy_waiting(services.db, first, needed - 100, clock.now)
                    waiting = count
                for _ in range(3):
                    loop.step()  # settle: reasons written, then nothing new
                reads, skipped = getattr(loop, "full_reads", None), getattr(loop, "skipped_cycles", None)
                quiet = [_timed(loop) for _ in range(args.passes)]
                counted = {} if reads is None else {"full reads": loop.full_reads - reads,
                                                    "cycles run": args.passes - (loop.skipped_cycles - skipped)}
                fresh: list[tuple[float, float]] = []
                for _ in range(args.passes):
                    submit(serial)
                    serial += 1
                    fresh.append(_timed(loop))
                    loop.step()
                waiting += args.passes
                out[f"{count} waiting"] = {"nothing new": _ms(quiet) | counted, "one new submit": _ms(fresh)}
    return {"database": "postgresql" if args.postgres_url else "sqlite", "passes": args.passes,
            "load_average": [round(x, 1) for x in os.getloadavg()], "pass_ms": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passes", type=int, default=15)
    parser.add_argument("--postgres-url", default=None)
    print(json.dumps(measure(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
