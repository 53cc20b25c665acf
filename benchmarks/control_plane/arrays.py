"""Job arrays: how long a real server takes to accept a 10,000-task array, list it and show it.

Starts a real `gpupool up` (see bench.py) on a fresh home and database (SQLite by default, PostgreSQL with
--postgres-url), submits `--repeat` arrays of `--tasks` tasks one after another (each capped at one task at
once, so the pool stays quiet), and prints a JSON summary: the accept time (the submit request, client side,
answer parsed), `ls` (the folded line), `show` (counts and the first 50 tasks) and every task (paged,
`Client.all_array_tasks`) of the last array.

    python benchmarks/control_plane/arrays.py [--tasks 10000] [--repeat 5] [--postgres-url URL]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import fresh_database, server, summary_ms  # the script's own directory (on sys.path above)

SPEC = "name: frames\narray: 0-{last}%1\ncommand: sleep 600 # frame {{{{array.index}}}}\nresources: {{cpu: 0.1}}\n"


def bench_arrays(args: argparse.Namespace) -> dict[str, Any]:
    """Accept, list and show times of arrays of `args.tasks` tasks (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="gpupool-bench-") as tmp:
        home = Path(tmp)
        with fresh_database(args.postgres_url, home) as url, server(url, home) as client:
            accept: list[float] = []
            array_id = 0
            for _ in range(args.repeat):
                started = time.perf_counter()
                answer = client.submit(SPEC.format(last=args.tasks - 1))
                accept.append(time.perf_counter() - started)
                array_id = answer.workload.id
                if answer.workload.array is None or answer.workload.array.tasks != args.tasks:
                    raise RuntimeError(f"array {array_id} was not accepted whole: {answer.workload.array}")
            listed = [_timed(client.list_workloads) for _ in range(args.repeat)]
            shown = [_timed(lambda: client.get_workload(array_id)) for _ in range(args.repeat)]
            every = [_timed(lambda: list(client.all_array_tasks(array_id))) for _ in range(args.repeat)]
            for workload in client.list_workloads(limit=1000).items:
                client.cancel(workload.id)
    return {
        "database": "postgresql" if args.postgres_url else "sqlite",
        "tasks": args.tasks,
        "accept": summary_ms(accept),
        "ls": summary_ms(listed),
        "show": summary_ms(shown),
        "every_task": summary_ms(every),
    }


def _timed(call: Any) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--postgres-url", help="run on a new database of this PostgreSQL server")
    print(json.dumps(bench_arrays(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
