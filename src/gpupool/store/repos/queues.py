"""Queues (one per project)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpupool.domain.queues import QueueSpec
from gpupool.store.convert import queue_from_row
from gpupool.store.orm import QueueRow
from gpupool.store.setup_cache import cached


def list_queues(session: Session) -> Sequence[QueueRow]:
    """Every queue, by name."""
    return session.scalars(select(QueueRow).order_by(QueueRow.name)).all()


def queue_by_name(session: Session, name: str) -> QueueRow | None:
    """The queue called `name`, or None."""
    return session.get(QueueRow, name)


def queue_of_project(session: Session, project_id: int) -> QueueRow | None:
    """The project's queue, or None."""
    return session.scalar(select(QueueRow).where(QueueRow.project_id == project_id))


def project_queue(session: Session, project_id: int) -> QueueSpec | None:
    """The project's queue as the scheduler sees it, or None; answered from the setup cache while the store's
    setup sequence is unchanged (store/setup_cache.py)."""
    def read(reading: Session) -> QueueSpec | None:
        row = queue_of_project(reading, project_id)
        return None if row is None else queue_from_row(row)

    return cached(session, ("project_queue", project_id), read)
