"""An idle server's workers wait for their interval (or a wake) between passes: none spins. The array
worker used to: its step's count of changed arrays, 0 when idle, was read as "look again after 0 s", so it
ran back to back, holding the interpreter from the requests and the other workers."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.servers import server_settings, start_server

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
