"""Where the CPU of the submit request path goes: a server in this process with its workers off, 4 SDK threads in
another process submitting one-replica jobs, yappi's CPU clock over every server thread (needs `pip install yappi`;
its overhead inflates the absolute figures, read the shares).

    python benchmarks/control_plane/request_profile.py [JOBS]     # default 400, after as many of warm-up
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import yappi
from request_cpu import submit_jobs, submit_server

LIBRARIES = ("gpupool", "starlette", "fastapi", "uvicorn", "anyio", "sqlalchemy/orm/session", "h11")


def main() -> None:
    """Profile JOBS submissions and print the inclusive and self tables, in ms per submission."""
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    home = Path(tempfile.mkdtemp())
    server = submit_server(home, f"sqlite:///{home / 'db.sqlite'}")
    submit_jobs(server, jobs, "warm")
    yappi.set_clock_type("cpu")
    yappi.start()
    began = time.perf_counter()
    submit_jobs(server, jobs, "measured")
    elapsed = time.perf_counter() - began
    yappi.stop()
    stats = list(yappi.get_func_stats())
    total = sum(thread.ttot for thread in yappi.get_thread_stats())
    print(f"{jobs} submits in {elapsed:.2f} s; profiled CPU {total * 1000 / jobs:.2f} ms per submit")
    where = [s for s in sorted(stats, key=lambda s: -s.ttot) if any(lib in s.module for lib in LIBRARIES)]
    for title, rows, field in (("inclusive", where[:70], "ttot"), ("self", sorted(stats, key=lambda s: -s.tsub)[:40],
                                                                      "tsub")):
        print(f"--- {title}, ms per submit, calls per submit")
        for s in rows:
            print(f"{getattr(s, field) * 1000 / jobs:7.3f} {s.ncall / jobs:6.1f}x {s.name} ({s.module}:{s.lineno})")
    server.stop()


if __name__ == "__main__":
    main()
