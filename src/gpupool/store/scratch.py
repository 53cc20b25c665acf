"""Throw-away PostgreSQL databases for tests and benchmarks: created empty, dropped afterwards."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ProgrammingError

# DROP ... WITH (FORCE) cannot end a superuser's session: an autovacuum worker busy in the database makes it
# fail with "permission denied to terminate process" for an ordinary role. Autovacuum on a test-sized database
# takes well under a second; 20 tries 0.5 s apart outlast it with room to spare.
DROP_TRIES, DROP_PAUSE_S = 20, 0.5


@contextmanager
def scratch_postgres_database(admin_url: str, prefix: str = "gpupool_scratch") -> Iterator[str]:
    """Create an empty database named `<prefix>_<random>` on the server of `admin_url` (a role that may
    create databases), yield its URL, and drop it (forcing other connections out) when the block ends."""
    admin = create_engine(make_url(admin_url), isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{secrets.token_hex(6)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        _drop(admin, name)
        admin.dispose()


def _drop(admin: Engine, name: str) -> None:
    """Drop database `name`, forcing other connections out; tried again while a session this role may not end
    (an autovacuum worker) is connected."""
    for attempt in range(DROP_TRIES):
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except ProgrammingError as error:  # InsufficientPrivilege: "permission denied to terminate process"
            if "terminate" not in str(error) or attempt == DROP_TRIES - 1:
                raise
            time.sleep(DROP_PAUSE_S)
