"""Alembic migrations: they build exactly the ORM's schema on SQLite and PostgreSQL, and go down and up again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from tests.support.databases import temporary_postgres_database

from gpupool.domain.errors import ValidationError
from gpupool.store.db import Database, alembic_config, normalise_url
from gpupool.store.orm import Base

TABLES = {"users", "projects", "memberships", "tokens", "queues", "nodes", "workloads", "replicas", "events",
          "gpu_settings", "pipelines", "pipeline_runs", "pipeline_steps", "schedule_fires", "service_revisions",
          "node_cordons", "usage_ledger"}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'fresh.db'}")
        yield db
        db.dispose()
    else:
        with temporary_postgres_database() as url:
            db = Database(url)
            yield db
            db.dispose()


def _differences(db: Database) -> list[object]:
    with db.engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata))


def test_upgrade_builds_the_orm_schema(empty_database: Database) -> None:
    empty_database.migrate()
    assert set(inspect(empty_database.engine).get_table_names()) >= TABLES
    assert _differences(empty_database) == []
    empty_database.migrate()  # idempotent
    assert _differences(empty_database) == []


def test_downgrade_to_nothing_and_up_again(empty_database: Database) -> None:
    empty_database.migrate()
    with empty_database.engine.begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    assert not TABLES & set(inspect(empty_database.engine).get_table_names())
    empty_database.migrate()
    assert _differences(empty_database) == []


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'wal.db'}")
    db.migrate()
    with db.session(write=False) as session:
        assert session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert session.execute(text("PRAGMA foreign_keys")).scalar() == 1
    db.dispose()


@pytest.mark.parametrize(("url", "expected"), [
    ("postgresql://u:p@h/db", "postgresql+psycopg"), ("postgres://u:p@h/db", "postgresql+psycopg"),
    ("sqlite:////tmp/x.db", "sqlite")])
def test_database_urls(url: str, expected: str) -> None:
    assert normalise_url(url).drivername == expected


@pytest.mark.parametrize("url", ["mysql://h/db", "sqlite://", "sqlite:///:memory:", "not a url"])
def test_unsupported_database_urls_are_refused(url: str) -> None:
    with pytest.raises(ValidationError):
        normalise_url(url)


def test_0020_adds_an_empty_idle_cap_to_existing_projects_and_drops_it_going_down(empty_database: Database) -> None:
    config = alembic_config()
    with empty_database.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0019")
        conn.execute(text("INSERT INTO projects (name, created_at) VALUES ('vision', 1.0)"))
    empty_database.migrate()
    with empty_database.engine.begin() as conn:
        assert conn.execute(text("SELECT name, max_idle_timeout_s FROM projects")).all() == [("vision", None)]
        conn.execute(text("UPDATE projects SET max_idle_timeout_s = 3600"))
        config.attributes["connection"] = conn
        command.downgrade(config, "0019")
    columns = {c["name"] for c in inspect(empty_database.engine).get_columns("projects")}
    assert "max_idle_timeout_s" not in columns
    with empty_database.engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM projects")).scalars().all() == ["vision"]
