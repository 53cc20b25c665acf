"""The server's own state on disk: who may read it, and that only one server uses it at a time.

Modes (set at every start, so an older home is tightened too): the home is 0700, or 0711 in a multi-user
pool (replicas must traverse it to reach their storage scopes, never list it); the database file, its WAL
and shared-memory files and the token file are 0600; the logs and executor directories are 0700. All of it
belongs to the server's OS user, so a replica running as another user reads none of it.

One server per home and per database: `ServerLock` holds an flock on `home/server.lock` (which names the
holder's pid and host) and, on SQLite, on `<database>.server-lock` beside the database file (the same file
may be named from another home), or on PostgreSQL a session advisory lock on a connection of its own, for
the server's life. A second server is refused with a message naming the first (two servers would stop each
other's replicas). A lease for several servers behind one database (high availability) would replace the
advisory lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import stat
from pathlib import Path

from sqlalchemy import Connection, text

from gpupool.domain.errors import ConflictError
from gpupool.server.settings import Settings
from gpupool.store.db import Database

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
TRAVERSE_ONLY_MODE = 0o711
LOCK_FILE = "server.lock"
# Any fixed 64-bit key works: it only has to be the same for every gpupool server ("gpupool" in ASCII).
ADVISORY_LOCK_KEY = 0x677075706F6F6C


def check_user_mode(settings: Settings) -> None:
    """ConflictError when the settings ask for a multi-user pool that cannot work: the server is not root, or
    the home is out of reach for other OS users (see `check_traversable`)."""
    if not settings.is_multi_user:
        return
    if os.geteuid() != 0:
        raise ConflictError("a multi-user pool needs the server to run as root (workloads switch to their "
                            "users' OS identities); run it as root or set GPUPOOL_MULTI_USER=false")
    check_traversable(settings.home)


def secure_home(settings: Settings) -> None:
    """Check the user mode (`check_user_mode`), create the home, logs and executor directories and set the
    modes of the module docstring."""
    check_user_mode(settings)
    home = settings.home
    for directory in (home, settings.logs_dir, settings.executor_dir):
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(PRIVATE_DIR_MODE)
    if settings.is_multi_user:
        home.chmod(TRAVERSE_ONLY_MODE)
    secure_files(settings)


def check_traversable(home: Path) -> None:
    """ConflictError unless every directory above `home` lets other OS users through (o+x): replicas that
    run as their users must reach their storage under it. /root, or a 0700 temporary directory, does not."""
    for directory in home.resolve().parents:
        if directory.exists() and not directory.stat().st_mode & stat.S_IXOTH:
            raise ConflictError(f"in a multi-user pool, replicas run as their users and must reach their storage "
                                f"under {home}, but {directory} is closed to other users; choose a home such as "
                                "/var/lib/gpupool (--home), or open the directory with chmod o+x")


def secure_files(settings: Settings) -> None:
    """Make the token file and a SQLite database in use (with its -wal and -shm files) mode 0600."""
    paths = [settings.token_file]
    if settings.database_url is None or settings.resolved_database_url.startswith("sqlite"):
        database = Path(settings.resolved_database_url.removeprefix("sqlite:///"))
        paths += [database, database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")]
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.chmod(PRIVATE_FILE_MODE)


def _lock_file(path: Path, what: str) -> int:
    """An fd holding an flock on `path` with this server's pid and host in it; ConflictError naming the
    holder when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ConflictError(f"another gpupool server ({holder}) uses {what}; stop it first, or give this one "
                            "another --home and database") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    return fd


class ServerLock:
    """Refuses a second server on the same home or the same PostgreSQL database (see the module docstring).
    `acquire` raises ConflictError naming the running server; `release` is idempotent."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self._fds: list[int] = []
        self._connection: Connection | None = None

    def acquire(self) -> None:
        """Take both locks or raise ConflictError (holding none)."""
        path = self.settings.home / LOCK_FILE
        self.settings.home.mkdir(parents=True, exist_ok=True)
        self._fds.append(_lock_file(path, f"the home {self.settings.home}"))
        if self.db.is_sqlite:  # the same database file may be named from another home
            database = Path(str(self.db.url.database)).expanduser().resolve()
            try:
                self._fds.append(_lock_file(database.with_name(database.name + ".server-lock"),
                                            f"the database {database}"))
            except BaseException:
                self.release()
                raise
        else:
            try:
                self._lock_database()
            except BaseException:
                self.release()
                raise

    def _lock_database(self) -> None:
        connection = self.db.engine.connect()
        taken = connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY}).scalar()
        connection.commit()
        if not taken:
            holder = connection.execute(text(
                "SELECT a.client_addr, a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.objid = :low"), {"low": ADVISORY_LOCK_KEY & 0xFFFFFFFF}).first()
            connection.close()
            who = f"connected from {holder[0] or 'this host'}, backend pid {holder[1]}" if holder else "unknown"
            raise ConflictError(f"another gpupool server ({who}) uses the database {self.db.describe()}; stop "
                                "it first (several servers on one database are not supported yet)")
        self._connection = connection

    def release(self) -> None:
        """Drop the locks (the database one with its connection)."""
        if self._connection is not None:
            self._connection.invalidate()  # ends the database session, and its advisory lock with it
            self._connection.close()
            self._connection = None
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
