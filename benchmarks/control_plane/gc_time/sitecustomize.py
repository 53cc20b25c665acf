"""Garbage-collection time of every Python process started with this directory first on PYTHONPATH: per
generation, the collections and the seconds they took (a `gc.callbacks` hook), written every second to
`$GC_TIME_DIR/<pid>.txt` (default /tmp/gc_time) with the process's command line and its tracked objects.

    PYTHONPATH=benchmarks/control_plane/gc_time .venv/bin/python benchmarks/control_plane/bench.py throughput
    grep -h "gpupool up" /tmp/gc_time/*.txt
"""

from __future__ import annotations

import gc
import os
import threading
import time
from pathlib import Path
from typing import Any

_started: list[float] = []
_totals = {generation: [0, 0.0, 0.0] for generation in range(3)}  # collections, seconds, longest


def _on_collection(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[:] = [time.perf_counter()]
    elif _started:
        took = time.perf_counter() - _started[0]
        totals = _totals[info["generation"]]
        totals[0] += 1
        totals[1] += took
        totals[2] = max(totals[2], took)


def _write_every_second(out: Path) -> None:
    command = Path("/proc/self/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:80]
    while True:
        time.sleep(1)
        text = ", ".join(f"gen{g}: {n} in {s:.3f} s (longest {m * 1000:.0f} ms)" for g, (n, s, m) in _totals.items())
        out.write_text(f"{command} | {text} | tracked objects {len(gc.get_objects())}, "
                       f"frozen {gc.get_freeze_count()}\n")


_dir = Path(os.environ.get("GC_TIME_DIR", "/tmp/gc_time"))
_dir.mkdir(parents=True, exist_ok=True)
gc.callbacks.append(_on_collection)
threading.Thread(target=_write_every_second, args=(_dir / f"{os.getpid()}.txt",), daemon=True).start()
