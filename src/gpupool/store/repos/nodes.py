"""Nodes of the pool."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Text, cast, select
from sqlalchemy.orm import Session, undefer

from gpupool.store.orm import NodeRow


def list_nodes(session: Session, with_inventory: bool = False) -> Sequence[NodeRow]:
    """Every registered node, by name. `gpu_inventory` (large, deferred) is read in the same query only with
    `with_inventory`; otherwise touching it costs one query per row."""
    query = select(NodeRow).order_by(NodeRow.name)
    return session.scalars(query.options(undefer(NodeRow.gpu_inventory)) if with_inventory else query).all()


def capacity_fingerprint(session: Session) -> tuple[Any, ...]:
    """A value that changes whenever a node's capacity, GPUs (or their version), labels, taints or
    schedulability change, read as stored text: no JSON decoding and no ORM objects, so a caller can check its
    cached view of the nodes on every request or cycle cheaply (the columns of
    `services.feasibility.nodes_fingerprint`, and `gpus_version`)."""
    rows = session.execute(select(NodeRow.name, NodeRow.cpu_milli, NodeRow.memory_mib, cast(NodeRow.gpus, Text),
                                  cast(NodeRow.labels, Text), cast(NodeRow.taints, Text), NodeRow.schedulable,
                                  NodeRow.gpus_version)
                           .order_by(NodeRow.name)).all()
    return tuple(tuple(row) for row in rows)


def node_by_name(session: Session, name: str) -> NodeRow | None:
    """The node called `name`, or None."""
    return session.get(NodeRow, name)
