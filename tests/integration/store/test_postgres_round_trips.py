"""Round trips a PostgreSQL store saves: a pool that pings only the connections that sat idle (and replaces the
ones that died meanwhile), and lookups without BEGIN and COMMIT."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from psycopg import pq
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session
from tests.support.databases import temporary_postgres_database

from gpupool.store import db as db_module
from gpupool.store.db import Database, busy_error


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with temporary_postgres_database() as url:
        yield url


@pytest.fixture
def database(postgres_url: str) -> Iterator[Database]:
    """A store of one pooled connection, so that every session reuses it."""
    store = Database(postgres_url, pool_size=1)
    yield store
    store.dispose()


@pytest.fixture
def killer(postgres_url: str) -> Iterator[Engine]:
    """A connection of its own that ends others' server processes, as a restarted database does."""
    engine = create_engine(postgres_url)
    yield engine
    engine.dispose()


def _kill(killer: Engine, pid: int) -> None:
    with killer.begin() as connection:
        connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


def _backend_pid(database: Database) -> int:
    """The server process id of the connection a new session gets."""
    with database.session(write=False) as session:
        return int(session.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _pings(database: Database) -> list[str]:
    """Count the dialect's pings on `database`'s engine from now on."""
    seen: list[str] = []
    original = database.engine.dialect.do_ping

    def counted(dbapi_connection: object) -> bool:
        seen.append("ping")
        return original(dbapi_connection)

    database.engine.dialect.do_ping = counted  # type: ignore[method-assign]
    return seen


def _transaction_status(session: Session) -> pq.TransactionStatus:
    return session.connection().connection.dbapi_connection.info.transaction_status  # type: ignore[union-attr]


def test_a_connection_back_in_the_pool_a_moment_ago_is_handed_out_without_a_ping(database: Database) -> None:
    pings = _pings(database)
    assert len({_backend_pid(database) for _ in range(20)}) == 1
    assert pings == []  # one connection, reused within milliseconds: no round trip for a ping


def test_an_idle_connection_is_pinged_and_a_dead_one_replaced(database: Database, killer: Engine) -> None:
    pings = _pings(database)
    first = _backend_pid(database)
    _kill(killer, first)
    time.sleep(db_module.PING_AFTER_IDLE_S + 0.1)
    second = _backend_pid(database)  # the dead connection failed its ping and a new one answered
    assert pings == ["ping"]
    assert second != first
    time.sleep(db_module.PING_AFTER_IDLE_S + 0.1)
    assert _backend_pid(database) == second  # a live idle connection passes its ping and is kept
    assert pings == ["ping", "ping"]


def test_without_the_idle_ping_the_dead_connection_would_have_failed_the_request(postgres_url: str,
                                                                                 killer: Engine) -> None:
    """What the ping is for: the same kill, with a pool that hands connections out as they are."""
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as connection:
            pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        _kill(killer, pid)
        time.sleep(0.2)
        with pytest.raises(OperationalError), engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    finally:
        engine.dispose()


def test_a_lookup_runs_without_begin_and_leaves_the_pooled_connection_transactional(database: Database) -> None:
    with database.session() as session:
        session.execute(text("CREATE TABLE IF NOT EXISTS probe (n integer)"))
    with database.lookup() as session:
        session.execute(text("SELECT count(*) FROM probe"))
        assert _transaction_status(session) == pq.TransactionStatus.IDLE  # no BEGIN was sent
    with database.session(write=False) as session:  # the same pooled connection, in a transaction again
        session.execute(text("SELECT count(*) FROM probe"))
        assert _transaction_status(session) == pq.TransactionStatus.INTRANS
    with pytest.raises(RuntimeError), database.session() as session:
        session.execute(text("INSERT INTO probe VALUES (1)"))
        raise RuntimeError("the write is rolled back")
    with database.lookup() as session:
        assert session.execute(text("SELECT count(*) FROM probe")).scalar_one() == 0


def test_a_connection_that_breaks_in_use_is_a_store_busy_error_to_retry(database: Database, killer: Engine) -> None:
    with pytest.raises(DBAPIError) as raised, database.session(write=False) as session:
        _kill(killer, session.execute(text("SELECT pg_backend_pid()")).scalar_one())
        session.execute(text("SELECT 1"))
    busy = busy_error(raised.value)
    assert busy is not None and "lost its connection" in busy.message
    with database.session(write=False) as session:  # the pool replaced it
        assert session.execute(text("SELECT 1")).scalar_one() == 1
