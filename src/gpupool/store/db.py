"""The database: engine set-up for SQLite (WAL) and PostgreSQL, transactional sessions, migrations.

SQLite is the embedded default (a file in $GPUPOOL_HOME); it runs in WAL mode so readers never block the
writer, and write transactions start with BEGIN IMMEDIATE so that concurrent writers queue on the busy
timeout instead of failing; inside the server process they queue first on a first-come, first-served gate
(`write_gate`), so that no writer is overtaken again and again by luck of timing. PostgreSQL (psycopg 3) is
for production and several server processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from gpupool.domain.errors import StoreBusyError, ValidationError
from gpupool.store import changes, event_log
from gpupool.store.orm import EventRow
from gpupool.store.setup_cache import CACHE_KEY, SetupCache
from gpupool.store.write_gate import WriteGate, gated_connection_class, give_gate_back, take_gate

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})  # PostgreSQL: serialization failure, deadlock detected
# PostgreSQL: lock_not_available (lock_timeout, NOWAIT), and the retryable ones once their retries are spent
BUSY_SQLSTATES = RETRYABLE_SQLSTATES | {"55P03"}
SQLITE_BUSY_CODES = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED (primary codes; extended ones add high bits)
SQLITE_BUSY_MESSAGES = ("database is locked", "database table is locked")  # the same, when no code is attached
# A pooled PostgreSQL connection idle this long is pinged before it is handed out (a restarted server, or a proxy
# that closes idle connections, leaves dead ones in the pool; a dead one is replaced). A connection back in the
# pool sooner is handed out as it is: under load a connection is reused every few milliseconds, and a ping at each
# checkout would add a round trip to every transaction; one that dies while in use fails its work, ping or not.
# One second: far above a busy pool's reuse interval, far below any idle timeout a server or proxy sets.
PING_AFTER_IDLE_S = 1.0
TRANSACTION_ATTEMPTS = 3  # a deadlock victim retried at once nearly always wins the second time
RETRY_PAUSE_S = 0.05
T = TypeVar("T")
_RETURNED_AT = "gpupool.returned_at"  # a pooled connection's record: when it was last returned (monotonic)


def is_retryable(error: BaseException) -> bool:
    """True for a database error that a new attempt of the same transaction may not meet again (PostgreSQL
    deadlock or serialization failure)."""
    orig = getattr(error, "orig", None)
    return isinstance(error, DBAPIError) and getattr(orig, "sqlstate", None) in RETRYABLE_SQLSTATES


def busy_error(error: BaseException) -> StoreBusyError | None:
    """The StoreBusyError a database error stands for when the store was only busy: SQLite's lock wait ran
    out ("database is locked"), or PostgreSQL gave up on a lock or aborted the transaction as a serialization
    failure or deadlock victim (Database.transaction retries those; this is when they escape); also when the
    connection broke (the database restarted, the network failed: the pool replaces it before its next use).
    None for any other error."""
    if not isinstance(error, DBAPIError):
        return None
    if error.connection_invalidated:
        return StoreBusyError("the server lost its connection to the database (the database restarted or the "
                              "network failed), so this request may not have completed; retry it in a moment "
                              "(a submit with the same idempotency key is stored once)")
    orig = error.orig
    code = getattr(orig, "sqlite_errorcode", None)
    sqlite_busy = (isinstance(code, int) and code & 0xFF in SQLITE_BUSY_CODES) or \
        any(text in str(orig).lower() for text in SQLITE_BUSY_MESSAGES)
    if not sqlite_busy and getattr(orig, "sqlstate", None) not in BUSY_SQLSTATES:
        return None
    return StoreBusyError("the server's database was busy (another write held a lock it needed for too long), "
                          "so this request was not completed; it can be retried in a moment")


def normalise_url(url: str) -> URL:
    """A SQLAlchemy URL; `postgresql://` and `postgres://` use the psycopg 3 driver."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    try:
        parsed = make_url(url)
    except Exception as exc:  # SQLAlchemy raises several types for bad URLs
        raise ValidationError(f"cannot read database URL: {exc}", "database_url") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValidationError("use sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB", "database_url")
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ValidationError("SQLite needs a file (sqlite:///PATH), not an in-memory database", "database_url")
    return parsed


class Database:
    """Engines and session factories for one database URL."""

    def __init__(self, url: str, pool_size: int = 10) -> None:
        self.url = normalise_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            Path(str(self.url.database)).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self._write_engine = _sqlite_engine(self.url, immediate=True)
            self._read_engine = _sqlite_engine(self.url, immediate=False)
        else:
            self._write_engine = create_engine(self.url, pool_size=pool_size, max_overflow=2 * pool_size)
            ping_after_idle(self._write_engine, PING_AFTER_IDLE_S)
            self._read_engine = self._write_engine
        self.setup_cache = SetupCache()  # what requests read on every call (store/setup_cache.py)
        info = {CACHE_KEY: self.setup_cache}
        self._writer = sessionmaker(self._write_engine, expire_on_commit=False, info=info)
        self._reader = sessionmaker(self._read_engine, expire_on_commit=False, info=info)
        # PostgreSQL: reads without BEGIN and COMMIT (`lookup`); SQLite has no round trips to save
        self._looker = self._reader if self.is_sqlite else sessionmaker(
            self._read_engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False, info=info)
        for factory in dict.fromkeys((self._writer, self._reader, self._looker)):  # each once
            event_log.install(factory, EventRow.__table__)  # type: ignore[arg-type]  # before the counters
            changes.install(factory)  # count what changes the scheduler's view (store/changes.py)

    @property
    def engine(self) -> Engine:
        """The engine used for writes (and migrations)."""
        return self._write_engine

    @contextmanager
    def session(self, write: bool = True) -> Iterator[Session]:
        """A session in one transaction: committed when the block ends normally, rolled back otherwise.
        `write=False` is for read-only work (on SQLite it does not take the write lock)."""
        with _committed(self._writer if write else self._reader) as session:
            yield session

    @contextmanager
    def lookup(self) -> Iterator[Session]:
        """A read-only session whose statements each see the database as of their own moment, not one snapshot
        for all: for reads that stand alone, such as a request's caller looked up in the setup cache (one row,
        store/setup_cache.py: a value is kept with the sequence read before it, which a later statement only
        makes newer). On PostgreSQL it runs without BEGIN and COMMIT: two round trips fewer than
        `session(write=False)`, which it is on SQLite."""
        with _committed(self._looker) as session:
            yield session

    def transaction(self, work: Callable[[Session], T], write: bool = True,
                    attempts: int = TRANSACTION_ATTEMPTS) -> T:
        """Run `work(session)` in one transaction (as `session`), running it again in a new transaction,
        up to `attempts` times in all, when the database aborted it as a deadlock victim or for a
        serialization failure. `work` must have no effect outside the database."""
        for attempt in range(1, attempts + 1):
            try:
                with self.session(write) as session:
                    return work(session)
            except DBAPIError as error:
                if attempt == attempts or not is_retryable(error):
                    raise
                time.sleep(RETRY_PAUSE_S * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def migrate(self) -> None:
        """Bring the schema to the newest migration (creates every table on an empty database), and make
        sure the change counter's row exists (store/changes.py)."""
        from alembic import command  # noqa: PLC0415  (Alembic loads only to migrate: 0.14 s of every start)

        with self._write_engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            changes.ensure_counter(connection)

    def dispose(self) -> None:
        """Close every pooled connection."""
        self._write_engine.dispose()
        if self._read_engine is not self._write_engine:
            self._read_engine.dispose()

    def describe(self) -> str:
        """The URL without its password, for logs."""
        return self.url.render_as_string(hide_password=True)

    @staticmethod
    def describe_url(settings: Any) -> str:
        """`settings.resolved_database_url` without its password (or as given when it cannot be read)."""
        try:
            return normalise_url(settings.resolved_database_url).render_as_string(hide_password=True)
        except ValidationError:
            return "(unreadable URL)"


@contextmanager
def _committed(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session of `factory`: committed when the block ends normally, rolled back otherwise."""
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def ping_after_idle(engine: Engine, idle_s: float) -> None:
    """Make `engine`'s pool ping a connection (the dialect's own ping) before handing it out when it was back in
    the pool at least `idle_s` seconds; a connection that fails the ping is replaced by a new one (the pool
    tries again). A connection opened since it was last returned is not pinged."""

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_connection: Any, record: Any) -> None:
        record.info[_RETURNED_AT] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _taken(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        returned = record.info.pop(_RETURNED_AT, None)
        if returned is None or time.monotonic() - returned < idle_s:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as error:  # what a dead connection raises depends on the driver
            raise DisconnectionError(f"a pooled connection failed its ping: {error}") from error
        if not alive:
            raise DisconnectionError("a pooled connection failed its ping")


def alembic_config() -> Config:
    """An Alembic configuration pointing at gpupool's migrations (no alembic.ini needed)."""
    from alembic.config import Config  # noqa: PLC0415  (see migrate)

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _sqlite_engine(url: URL, immediate: bool) -> Engine:
    connect_args: dict[str, Any] = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    if immediate:  # the writers' engine: one gate for all its connections
        database = Path(str(url.database)).expanduser()
        connect_args["factory"] = gated_connection_class(WriteGate(database.with_name(database.name + ".write-lock")))
    engine = create_engine(url, connect_args=connect_args, pool_size=5, max_overflow=20)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let the "begin" hook below issue BEGIN
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        if not immediate:
            connection.exec_driver_sql("BEGIN")
            return
        dbapi_connection = connection.connection.dbapi_connection
        take_gate(dbapi_connection, SQLITE_BUSY_TIMEOUT_MS / 1000)
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            give_gate_back(dbapi_connection)
            raise

    return engine
