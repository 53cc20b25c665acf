"""A real gpupool server for tests: create_app served by uvicorn on 127.0.0.1 and a free port, in a thread of
the test process (so a fake executor or a test clock can be injected), stopped by the test."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from tests.support.databases import temporary_postgres_database

from gpupool.client.http import Client
from gpupool.executors.base import Executor
from gpupool.executors.fake import RUN_FOREVER, FakeExecutor
from gpupool.server.app import create_app
from gpupool.server.context import Services
from gpupool.server.node_providers import NodeProvider
from gpupool.server.settings import Settings


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], object], timeout_s: float = 10.0, interval_s: float = 0.02,
               what: str = "condition") -> Any:
    """Return check()'s first truthy value; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not met within {timeout_s} s")
        time.sleep(interval_s)


class ManualClock:
    """A clock tests move by hand (the server's workers read it as `now`)."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@dataclass
class TestServer:
    """A running server and how to talk to it."""

    __test__ = False
    settings: Settings
    url: str
    server: uvicorn.Server
    thread: threading.Thread
    app: FastAPI

    @property
    def services(self) -> Services:
        """The running app's services (its workers, scheduling loop and reconciler)."""
        services: Services = self.app.state.services
        return services

    @property
    def admin_token(self) -> str:
        return self.settings.token_file.read_text().strip()

    def client(self, token: str | None = None) -> Client:
        return Client(self.url, token or self.admin_token, timeout_s=30)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def server_settings(home: Path, database_url: str, **overrides: Any) -> Settings:
    """Settings for a fast test server: short intervals, no minimum run time, a 4-CPU 16 GiB node, a
    single-user pool that trusts its users (the isolation tests turn multi_user on)."""
    values: dict[str, Any] = {
        "home": home, "database_url": database_url, "host": "127.0.0.1", "port": free_port(),
        "node_name": "node", "node_cpus": 4, "node_memory": "16GiB", "schedule_interval_s": 0.05,
        "reconcile_interval_s": 0.05, "stop_grace_s": 1.0, "min_runtime_s": 0.0, "log_level": "warning",
        "multi_user": False, "trust_users": True}
    values.update(overrides)
    return Settings(**values)


def start_server(settings: Settings, executor: Executor | None = None,
                 clock: Callable[[], float] | None = time.time, node_providers: Sequence[NodeProvider] = (),
                 nvml_backend: Callable[[], Any] | None = None) -> TestServer:
    """Serve create_app(settings) in a thread and wait until /healthz answers. `nvml_backend` replaces the
    GPU backend of a node without declared or scripted GPUs (default: the real NVML). `clock=None` gives the
    server its own clock (a server given one keeps its scheduler in this process)."""
    backend = {"nvml_backend": nvml_backend} if nvml_backend else {}
    app = create_app(settings, executor=executor, clock=clock, node_providers=node_providers, **backend)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-server", daemon=True)
    thread.start()
    url = f"http://{settings.host}:{settings.port}"

    def healthy() -> bool:
        if not thread.is_alive():
            pytest.fail("the test server stopped during start-up (see the log above)")
        try:
            return httpx.get(url + "/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(healthy, 30, 0.05, "server start")
    return TestServer(settings, url, server, thread, app)


def refusing_server(database: str, tmp: Path) -> Iterator[TestServer]:
    """A server on `database` ("sqlite" or "postgresql", a throw-away one) with 4 declared A100s and a fake
    executor whose replicas run forever; for module-scoped fixtures whose requests must change nothing."""
    def serve(url: str) -> Iterator[TestServer]:
        running = start_server(server_settings(tmp / "home", url, gpus="4xA100-80GB"),
                               FakeExecutor(default=RUN_FOREVER))
        yield running
        running.stop()

    if database == "sqlite":
        yield from serve(f"sqlite:///{tmp / 'gpupool.db'}")
    else:
        with temporary_postgres_database() as url:
            yield from serve(url)
