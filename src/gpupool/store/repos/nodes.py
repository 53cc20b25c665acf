"""Nodes of the pool."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpupool.store.orm import NodeRow


def list_nodes(session: Session) -> Sequence[NodeRow]:
    """Every registered node, by name."""
    return session.scalars(select(NodeRow).order_by(NodeRow.name)).all()


def node_by_name(session: Session, name: str) -> NodeRow | None:
    """The node called `name`, or None."""
    return session.get(NodeRow, name)
