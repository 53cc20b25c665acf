"""End-to-end fixtures: real `gpupool up` processes with the local executor (real replica processes)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.support.processes import ServerProcess

StartServer = Callable[..., ServerProcess]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start `gpupool up` with extra arguments (and GPUPOOL_* settings in `env`); every server and its
    replicas are stopped at the end."""
    started: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        server = ServerProcess(tmp_path / f"home{len(started)}", list(args), extra_env=dict(env or {}))
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
        server.stop_replicas()
