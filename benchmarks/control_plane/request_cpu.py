"""The server's CPU per submit request, without a profiler: a server in this process with its workers off, 4 SDK
threads in another process submitting one-replica jobs (each with an idempotency key), the CPU this process used
(getrusage) divided by the submissions. Several rounds on the same server, after as many submissions of warm-up.

    python benchmarks/control_plane/request_cpu.py [--jobs 400] [--rounds 3] [--postgres-url URL]

To compare the code of two commits, run it with PYTHONPATH set to each one's `src` (see README.md).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import fresh_database
from tests.support.servers import TestServer, server_settings, start_server

from gpupool.executors.fake import FakeExecutor

CLIENT = """
import sys, threading
from gpupool.client.http import Client
url, token, jobs, prefix = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def run(t):
    with Client(url, token) as client:
        for k in range(jobs // 4):
            client.submit("name: t\\ncommand: 'true'\\nresources: {gpu: 0.1}\\n", idempotency_key=f"{prefix}{t}-{k}")
threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
"""


def submit_server(home: Path, database_url: str) -> TestServer:
    """A server in this process on `database_url` with its workers off (only requests use its CPU)."""
    settings = server_settings(home, database_url, gpus="8xA100-80GB", workers=False, log_level="error",
                               node_cpus=64, node_memory="512GiB")
    return start_server(settings, FakeExecutor())


def submit_jobs(server: TestServer, jobs: int, prefix: str) -> None:
    """Submit `jobs` one-replica jobs from 4 SDK threads in another process (keys start with `prefix`)."""
    subprocess.run([sys.executable, "-c", CLIENT, server.url, server.admin_token, str(jobs), prefix], check=True)


def _cpu_s() -> float:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def main() -> None:
    """Print, as JSON, the server's CPU ms per submission and the submissions/s of each round, and their medians."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=400, help="submissions per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--postgres-url", help="run on a new database of this PostgreSQL server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, fresh_database(args.postgres_url, Path(tmp)) as url:
        home = Path(tmp)
        server = submit_server(home, url)
        try:
            submit_jobs(server, args.jobs, "warm")
            cpu_ms, rates = [], []
            for number in range(args.rounds):
                cpu_before, began = _cpu_s(), time.perf_counter()
                submit_jobs(server, args.jobs, f"round{number}")
                cpu_ms.append(round((_cpu_s() - cpu_before) * 1000 / args.jobs, 2))
                rates.append(round(args.jobs / (time.perf_counter() - began), 1))
        finally:
            server.stop()
    print(json.dumps({"database": "postgresql" if args.postgres_url else "sqlite", "jobs": args.jobs,
                      "server_cpu_ms_per_submit": cpu_ms, "median_cpu_ms": statistics.median(cpu_ms),
                      "submits_per_second": rates, "median_rate": statistics.median(rates)}))


if __name__ == "__main__":
    main()
