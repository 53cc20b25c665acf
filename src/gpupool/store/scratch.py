"""Throw-away PostgreSQL databases for tests and benchmarks: created empty, dropped afterwards."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


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
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
