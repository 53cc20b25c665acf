"""Real databases for tests: a SQLite file per test, and a throw-away PostgreSQL database per test session.

PostgreSQL is found at GPUPOOL_TEST_POSTGRES_URL (default: the `gpupool` role on 127.0.0.1:5432 that
`.ci/run` creates). Without a reachable server the PostgreSQL cases are skipped with the reason, except
in CI (CI=true), where they fail: CI must exercise PostgreSQL.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from gpupool.store.db import Database
from gpupool.store.orm import Base, ProjectRow, QueueRow, UserRow
from gpupool.store.scratch import scratch_postgres_database

DEFAULT_POSTGRES_URL = "postgresql+psycopg://gpupool:gpupool@127.0.0.1:5432/postgres"


def postgres_admin_url() -> str:
    """The URL of a PostgreSQL database the tests may create databases from."""
    return os.environ.get("GPUPOOL_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def require_postgres() -> None:
    """Skip (or fail in CI) when no PostgreSQL server is reachable."""
    url = postgres_admin_url()
    try:
        # 15 s: on a loaded 2-core machine a first connection has taken over 3 s
        engine = create_engine(url, connect_args={"connect_timeout": 15})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except SQLAlchemyError as exc:
        message = (f"no PostgreSQL reachable at {make_url(url).render_as_string(hide_password=True)} "
                   f"({type(exc.orig or exc).__name__}); install and start it (see .ci/run) or set "
                   "GPUPOOL_TEST_POSTGRES_URL")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


@contextmanager
def temporary_postgres_database() -> Iterator[str]:
    """Create an empty database, yield its URL, drop it afterwards."""
    require_postgres()
    with scratch_postgres_database(postgres_admin_url(), "gpupool_test") as url:
        yield url


@contextmanager
def fresh_database(kind: str, directory: Path) -> Iterator[str]:
    """A database of its own for a test or a module: `kind` "sqlite" gives a new file in `directory`,
    "postgresql" a throw-away PostgreSQL database, dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{directory / 'gpupool.db'}"
        return
    with temporary_postgres_database() as url:
        yield url


def truncate_all(url: str) -> None:
    """Empty every gpupool table of a PostgreSQL database (keeping the schema and its migration version)."""
    engine = create_engine(url)
    with engine.begin() as conn:
        tables = [row[0] for row in conn.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"))]
        if tables:
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
    engine.dispose()


def add_project_user_queue(session: Session, *rows: Base) -> None:
    """Add project 1 `a` with its queue `a` and user 1 `u` (what most store tests start from), then `rows`."""
    session.add_all([ProjectRow(id=1, name="a", created_at=0.0), UserRow(id=1, name="u", created_at=0.0)])
    session.flush()
    session.add_all([QueueRow(name="a", project_id=1, updated_at=0.0), *rows])


@contextmanager
def seeded_database(kind: str, directory: Path, *rows: Base) -> Iterator[Database]:
    """A migrated store of `kind` (see fresh_database) holding `add_project_user_queue`'s rows and `rows`;
    disposed of afterwards."""
    with fresh_database(kind, directory) as url:
        db = Database(url)
        db.migrate()
        with db.session() as session:
            add_project_user_queue(session, *rows)
        yield db
        db.dispose()
