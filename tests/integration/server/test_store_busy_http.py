"""A real server over HTTP whose SQLite write lock another process holds past the lock wait (shortened here
from the server's 30 s): the API answers 503 store_busy with Retry-After and the typed client raises
StoreBusyError, the console shows a 503 page saying to retry, and once the lock is let go the same requests
succeed."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.integration.server.test_console_http import browser_for, csrf_of
from tests.support.servers import TestServer, server_settings, start_server

from gpupool.domain.errors import StoreBusyError
from gpupool.executors.fake import FakeExecutor
from gpupool.store import db as db_module

LOCK_WAIT_MS = 300  # long enough for an uncontended write on a loaded machine, short enough to keep the test quick


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestServer]:
    monkeypatch.setattr(db_module, "SQLITE_BUSY_TIMEOUT_MS", LOCK_WAIT_MS)
    running = start_server(server_settings(tmp_path / "home", f"sqlite:///{tmp_path / 'gpupool.db'}"), FakeExecutor())
    yield running
    running.stop()


def test_a_held_write_lock_is_a_503_to_retry_then_the_request_succeeds(server: TestServer, tmp_path: Path) -> None:
    console = browser_for(server, server.admin_token)
    csrf = csrf_of(console.get("/admin").text)
    holder = sqlite3.connect(tmp_path / "gpupool.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer keeps the lock
    try:
        answer = httpx.post(
            f"{server.url}/api/v1/projects",
            json={"name": "busy"},
            headers={"Authorization": f"Bearer {server.admin_token}"},
            timeout=30,
        )
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
        assert answer.json()["error"]["type"] == "store_busy" and "retried" in answer.text
        with server.client() as client, pytest.raises(StoreBusyError, match="can be retried"):
            client.create_project("busy")
        page = console.post("/admin/projects", data={"csrf_token": csrf, "name": "busy"})
        assert page.status_code == 503 and page.headers["content-type"].startswith("text/html")  # a page
        assert "can be retried" in page.text and "Traceback" not in page.text
    finally:
        holder.rollback()
        holder.close()
    with server.client() as client:
        assert client.create_project("busy").name == "busy"
