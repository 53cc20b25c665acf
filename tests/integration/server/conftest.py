"""Fixtures for tests that drive a real server over HTTP: on SQLite and on PostgreSQL, with a scripted
FakeExecutor injected so that replicas do what each test needs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.databases import temporary_postgres_database, truncate_all
from tests.support.servers import TestServer, server_settings, start_server

from gpupool.client.http import Client
from gpupool.executors.base import Executor
from gpupool.executors.fake import RUN_FOREVER, FakeExecutor

ServerFactory = Callable[..., TestServer]


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """One throw-away PostgreSQL database for the session (emptied before each test that uses it)."""
    with temporary_postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database: a SQLite file, or the session's PostgreSQL database emptied."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gpupool.db'}"
    url: str = request.getfixturevalue("postgres_database")
    truncate_all(url)
    return url


@pytest.fixture
def fake() -> FakeExecutor:
    """A fake executor whose replicas run until stopped, unless a test scripts them otherwise."""
    return FakeExecutor(default=RUN_FOREVER)


@pytest.fixture
def server_factory(tmp_path: Path, database_url: str) -> Iterator[ServerFactory]:
    """Start servers on this test's database; all are stopped when the test ends."""
    started: list[TestServer] = []

    def make(executor: Executor | None = None, clock: Callable[[], float] | None = None,
             nvml_backend: Callable[[], Any] | None = None, **settings: Any) -> TestServer:
        home = tmp_path / f"home{len(started)}" if "home" not in settings else settings.pop("home")
        server = start_server(server_settings(home, database_url, **settings), executor,
                              **({"clock": clock} if clock else {}), nvml_backend=nvml_backend)
        started.append(server)
        return server

    yield make
    for server in reversed(started):
        server.stop()


@pytest.fixture
def server(server_factory: ServerFactory, fake: FakeExecutor) -> TestServer:
    """A server with one node of 4 CPU, 16 GiB and four simulated A100-80GB, and the fake executor."""
    return server_factory(executor=fake, gpus="4xA100-80GB")


@pytest.fixture
def admin(server: TestServer) -> Iterator[Client]:
    """A client with the administrator's token (from the token file the first start wrote)."""
    with server.client() as client:
        yield client
