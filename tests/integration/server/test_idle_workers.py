"""An idle server's workers wait for their interval (or a wake) between passes: none spins. The array
worker used to: its step's count of changed arrays, 0 when idle, was read as "look again after 0 s", so it
ran back to back, holding the interpreter from the requests and the other workers."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.servers import server_settings, start_server

from gpupool.server.app import CONTROLLER_MIN_GAP_S

WATCH_S = 2.0  # long enough to tell an interval (1 s) from a spin (hundreds of passes), short for the suite
MAX_PASSES = 10  # an interval of 1 s gives 2 or 3, wakes during start-up a few more; a spin gave 549


def test_no_worker_runs_back_to_back_on_an_idle_server(tmp_path: Path) -> None:
    server = start_server(server_settings(tmp_path / "home", f"sqlite:///{tmp_path / 'gpupool.db'}"))
    try:
        workers = {
            name: getattr(server.services, name) for name in ("arrays", "sweeps", "pipelines", "culler", "nodes_worker")
        }
        before = {name: worker.steps for name, worker in workers.items() if worker is not None}
        time.sleep(WATCH_S)
        passes = {name: workers[name].steps - count for name, count in before.items()}
    finally:
        server.stop()
    assert all(count <= MAX_PASSES for count in passes.values()), passes


def test_the_controller_workers_follow_a_stream_of_replica_changes_at_their_minimum_gap(tmp_path: Path) -> None:
    """Every replica change wakes the sweep controller and the array worker; under a stream of changes (a
    wake every 20 ms, as while a burst of jobs starts) each runs at most one pass per CONTROLLER_MIN_GAP_S,
    and still runs after the wakes (none is lost)."""
    server = start_server(server_settings(tmp_path / "home", f"sqlite:///{tmp_path / 'gpupool.db'}"))
    try:
        workers = {name: getattr(server.services, name) for name in ("sweeps", "arrays")}
        before = {name: worker.steps for name, worker in workers.items()}
        began = time.monotonic()
        while time.monotonic() - began < WATCH_S:
            server.services.wake_after_replicas_change()
            time.sleep(0.02)
        watched = time.monotonic() - began
        passes = {name: worker.steps - before[name] for name, worker in workers.items()}
    finally:
        server.stop()
    most = watched / CONTROLLER_MIN_GAP_S + 2  # one pass per gap, plus the one in flight at each end
    assert all(2 <= count <= most for count in passes.values()), (passes, most)  # without the gap: one a wake
