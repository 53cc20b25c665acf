"""Alembic environment: runs migrations on the connection gpupool hands over (see store/db.py)."""

from __future__ import annotations

from alembic import context

from gpupool.store.orm import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run gpupool's migrations through gpupool.store.db.Database.migrate()")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                  compare_type=True)
with context.begin_transaction():
    context.run_migrations()
