"""Queues (one per project)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpupool.store.orm import QueueRow


def list_queues(session: Session) -> Sequence[QueueRow]:
    """Every queue, by name."""
    return session.scalars(select(QueueRow).order_by(QueueRow.name)).all()


def queue_by_name(session: Session, name: str) -> QueueRow | None:
    """The queue called `name`, or None."""
    return session.get(QueueRow, name)


def queue_of_project(session: Session, project_id: int) -> QueueRow | None:
    """The project's queue, or None."""
    return session.scalar(select(QueueRow).where(QueueRow.project_id == project_id))
