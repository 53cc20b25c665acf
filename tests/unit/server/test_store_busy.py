"""A store that stays busy past its lock wait (SQLite's "database is locked", PostgreSQL's lock timeout or a
serialization failure that outlived the retries) answers 503 with Retry-After and a message saying the request
can be retried, and both clients raise StoreBusyError for it; other database errors stay a plain 500."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import psycopg.errors
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError

from gpupool.client.errors import error_from_response
from gpupool.domain.errors import StoreBusyError
from gpupool.server.api.errors import install_error_handlers
from gpupool.store import db as db_module
from gpupool.store.db import Database, busy_error


@pytest.fixture
def locked_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Database]:
    """A SQLite store whose write lock another connection holds, with a short lock wait (so the test does not
    wait the server's 30 s)."""
    monkeypatch.setattr(db_module, "SQLITE_BUSY_TIMEOUT_MS", 200)
    database = Database(f"sqlite:///{tmp_path / 'busy.db'}")
    with database.session() as session:
        session.execute(text("CREATE TABLE t (x INTEGER)"))
    holder = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    yield database
    holder.rollback()
    holder.close()
    database.dispose()


def _app(fail: Exception | None, database: Database | None = None) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/write")
    def write() -> dict[str, str]:
        if fail is not None:
            raise fail
        assert database is not None
        database.transaction(lambda session: session.execute(text("INSERT INTO t VALUES (1)")))
        return {"ok": "written"}

    return TestClient(app, raise_server_exceptions=False)


def _assert_busy(answer: object) -> None:
    assert answer.status_code == 503, answer.text  # type: ignore[attr-defined]
    assert int(answer.headers["retry-after"]) >= 1  # type: ignore[attr-defined]
    body = answer.json()  # type: ignore[attr-defined]
    assert body["error"]["type"] == "store_busy"
    assert "busy" in body["error"]["message"] and "retried" in body["error"]["message"]
    raised = error_from_response(answer.status_code, answer.text)  # type: ignore[attr-defined]
    assert isinstance(raised, StoreBusyError) and "retried" in str(raised)


def test_a_sqlite_write_lock_that_times_out_is_a_503_to_retry(locked_sqlite: Database) -> None:
    _assert_busy(_app(None, locked_sqlite).post("/write"))


@pytest.mark.parametrize(
    "orig",
    [
        sqlite3.OperationalError("database is locked"),
        sqlite3.OperationalError("database table is locked"),
        psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"),
        psycopg.errors.SerializationFailure("could not serialize access due to concurrent update"),
        psycopg.errors.DeadlockDetected("deadlock detected"),
    ],
)
def test_lock_timeouts_and_serialization_failures_are_a_503(orig: Exception) -> None:
    error = OperationalError("UPDATE workloads SET status=?", {}, orig)
    assert busy_error(error) is not None
    _assert_busy(_app(error).post("/write"))


def test_other_database_errors_stay_a_500_without_details() -> None:
    error = DBAPIError("SELECT secret", {}, sqlite3.DatabaseError("file is not a database"))
    assert busy_error(error) is None
    answer = _app(error).post("/write")
    assert answer.status_code == 500 and "retry-after" not in answer.headers
    assert "secret" not in answer.text and "not a database" not in answer.text


def test_the_cli_says_store_busy_with_the_try_again_exit_code() -> None:
    from gpupool.cli.common import ExitCode, classify  # noqa: PLC0415  (the CLI is not what this module tests)

    assert classify(StoreBusyError("busy")) == ("store_busy", ExitCode.UNREACHABLE)
