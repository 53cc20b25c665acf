"""Per-GPU settings of nodes (sharing mode, MIG layout, health mark, MPS daemon state)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpupool.store.orm import GpuSettingRow, NodeRow


def settings_of(session: Session, node: str) -> dict[int, GpuSettingRow]:
    """The settings of every GPU of `node`, by GPU index."""
    rows = session.scalars(select(GpuSettingRow).where(GpuSettingRow.node == node)
                           .order_by(GpuSettingRow.gpu_index)).all()
    return {row.gpu_index: row for row in rows}


def all_settings(session: Session) -> dict[str, dict[int, GpuSettingRow]]:
    """The settings of every GPU of every node: node -> GPU index -> row."""
    found: dict[str, dict[int, GpuSettingRow]] = {}
    for row in session.scalars(select(GpuSettingRow).order_by(GpuSettingRow.node, GpuSettingRow.gpu_index)):
        found.setdefault(row.node, {})[row.gpu_index] = row
    return found


def setting(session: Session, node: str, gpu_index: int) -> GpuSettingRow | None:
    """The settings of one GPU, or None."""
    return session.get(GpuSettingRow, (node, gpu_index))


def lock_node(session: Session, name: str) -> NodeRow | None:
    """The node row, locked until the transaction ends (PostgreSQL; SQLite write transactions are already
    exclusive), so that GPU changes and the scheduler's binds on that node happen one after the other."""
    return session.scalar(select(NodeRow).where(NodeRow.name == name).with_for_update())


def lock_node_versions(session: Session, names: Sequence[str]) -> dict[str, int]:
    """The GPU version of each node of `names` that exists, its row locked in name order (see lock_node): two
    plain columns, not the rows with their cards (the scheduler checks only the versions before its binds)."""
    if not names:
        return {}
    query = (select(NodeRow.name, NodeRow.gpus_version).where(NodeRow.name.in_(sorted(set(names))))
             .order_by(NodeRow.name).with_for_update())
    return {name: int(version) for name, version in session.execute(query)}
