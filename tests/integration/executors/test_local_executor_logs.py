"""Logs that would cost the server: one enormous line, many lines. Reading stays linear and bounded."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from conftest import quick_base_env

from gpupool.executors.base import ReplicaState
from gpupool.executors.local import LocalExecutor
from gpupool.executors.logfiles import MAX_LINE_BYTES, cut_marker

if TYPE_CHECKING:
    from conftest import LocalHarness

HUGE = 100 * 1024 * 1024  # 100 MiB without a newline: what `print(tensor)` of a big array can do


def test_a_huge_line_is_cut_and_tail_answers_at_once(local: LocalHarness) -> None:
    handle = local.start(f"echo before; head -c {HUGE} /dev/zero | tr '\\0' x; echo; echo after")
    assert local.wait(handle, timeout_s=60).state == ReplicaState.SUCCEEDED
    began = time.monotonic()
    lines = list(local.executor.logs(handle, tail=2))
    elapsed = time.monotonic() - began
    assert lines == ["x" * MAX_LINE_BYTES + cut_marker(HUGE - MAX_LINE_BYTES), "after"]
    assert elapsed < 5, elapsed  # linear in the file (about 0.2 s here); quadratic joins took minutes
    began = time.monotonic()
    text = "".join(local.executor.log_text(handle))
    assert text.startswith("before\nxxx") and text.endswith(f"{cut_marker(HUGE - MAX_LINE_BYTES)}\nafter\n")
    assert time.monotonic() - began < 5


def test_many_lines_come_in_few_chunks(local: LocalHarness) -> None:
    handle = local.start("seq 1 200000")
    local.wait(handle, timeout_s=60)
    began = time.monotonic()
    chunks = list(local.executor.log_text(handle))
    elapsed = time.monotonic() - began
    assert "".join(chunks).splitlines() == [str(n) for n in range(1, 200001)]
    assert len(chunks) < 30  # 1.3 MB of output in 64 KiB blocks: 21 chunks, not 200,000 writes
    assert elapsed < 5, elapsed


def test_a_log_stops_growing_at_its_cap_and_says_so(local: LocalHarness) -> None:
    local.executor = LocalExecutor(local.root, base_env=quick_base_env(local.tmp / "home"), log_cap_bytes=100_000)
    # 1,000,000 lines (6.9 MB) into a 100 kB cap; the command is never blocked and ends normally
    handle = local.start("seq 1 1000000; echo done >&2; exit 3")
    status = local.wait(handle, timeout_s=60)
    assert (status.state, status.exit_code) == (ReplicaState.FAILED, 3)
    log = Path(handle["log_path"])
    lines = list(local.executor.logs(handle))
    assert lines[-1] == "[gpupool: this log reached its limit of 100000 bytes; later output is discarded]"
    assert lines[0] == "1" and "done" not in lines
    assert 100_000 <= log.stat().st_size < 100_200
