"""GPUs in the store: a node's discovered inventory plus its per-GPU settings (sharing mode, health mark, MIG
change in progress) become the scheduler's cards, and the API's views of them.

`refresh_node_gpus` is the one writer of `NodeRow.gpus` for nodes with an inventory: it runs
`to_domain_gpus(inventory, modes=..., unhealthy=...)` and bumps the node's `gpus_version` whenever the
cards change, so that the scheduling loop drops binds it planned on the old cards.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from gpupool.domain.errors import NotFoundError
from gpupool.domain.nodes import Gpu
from gpupool.domain.placement import GpuAssignment
from gpupool.domain.resources import SharingMode
from gpupool.gpu.inventory import to_domain_gpus
from gpupool.gpu.types import GpuInventory
from gpupool.server.api import schemas
from gpupool.store.convert import gpu_from_json, gpu_to_json, placement_from_json
from gpupool.store.orm import GpuSettingRow, NodeRow
from gpupool.store.repos import gpus as gpu_repo
from gpupool.store.repos import nodes as node_repo
from gpupool.store.repos import workloads as workload_repo

RECONFIGURING = "a MIG change is in progress"


# ------------------------------------------------------------------------------------ store side
def sync_settings(session: Session, node: str, inventory: GpuInventory, default_mode: SharingMode,
                  now: float) -> dict[int, GpuSettingRow]:
    """Settings for every discovered GPU of `node`: new GPUs get `default_mode`, settings of GPUs that are
    gone are dropped, and a MIG change left half-done by a crash is forgotten (the inventory was just
    discovered again). Returns the settings by GPU index."""
    settings = gpu_repo.settings_of(session, node)
    present = {g.index for g in inventory.gpus}
    for index in sorted(set(settings) - present):
        session.delete(settings.pop(index))
    for index in sorted(present - set(settings)):
        settings[index] = GpuSettingRow(node=node, gpu_index=index, sharing_mode=default_mode.value,
                                        reconfiguring=False, mps_message="", updated_at=now)
        session.add(settings[index])
    for row in settings.values():
        row.reconfiguring = False
    session.flush()
    return settings


def refresh_node_gpus(session: Session, row: NodeRow, settings: Mapping[int, GpuSettingRow] | None = None) -> bool:
    """Recompute the node's cards from its inventory and GPU settings; True (and `gpus_version` + 1) when
    they changed. Nodes without an inventory keep their cards."""
    if row.gpu_inventory is None:
        return False
    settings = settings if settings is not None else gpu_repo.settings_of(session, row.name)
    inventory = GpuInventory.from_dict(row.gpu_inventory)
    modes = {index: SharingMode(s.sharing_mode) for index, s in settings.items()}
    unhealthy = {index for index, s in settings.items() if s.unhealthy_reason or s.reconfiguring}
    cards = [gpu_to_json(g) for g in to_domain_gpus(inventory, modes, unhealthy, row.gpu_simulated)]
    if cards == row.gpus:
        return False
    row.gpus = cards
    row.gpus_version = (row.gpus_version or 0) + 1
    return True


def card_of(row: NodeRow, index: int) -> Gpu:
    """The scheduler's card `index` of a node; NotFoundError naming the node's cards otherwise."""
    for data in row.gpus:
        if int(data["index"]) == index:
            return gpu_from_json(data)
    cards = ", ".join(str(g["index"]) for g in row.gpus) or "none"
    raise NotFoundError(f"node {row.name} has no GPU {index} (its GPUs: {cards})")


def node_or_404(session: Session, name: str, lock: bool = False) -> NodeRow:
    """The node called `name` (locked for the transaction when `lock`); NotFoundError otherwise."""
    row = gpu_repo.lock_node(session, name) if lock else node_repo.node_by_name(session, name)
    if row is None:
        names = ", ".join(n.name for n in node_repo.list_nodes(session)) or "none"
        raise NotFoundError(f"node {name!r} not found (nodes: {names})")
    return row


def running_assignments(session: Session, node: str, index: int) -> list[GpuAssignment]:
    """The assignments on GPU `index` of `node` held by replicas that have not ended."""
    found = []
    for replica in workload_repo.live_replicas(session):
        if replica.node == node:
            found += [a for a in placement_from_json(replica.placement).gpus if a.index == index]
    return found


def mark_unhealthy(session: Session, node: str, index: int, reason: str, now: float) -> bool:
    """Record that a GPU is unhealthy (sticky until an admin clears it) and stop placing on it; False when
    it was already marked or is unknown."""
    row = gpu_repo.lock_node(session, node)
    setting = gpu_repo.setting(session, node, index)
    if setting is None or row is None or setting.unhealthy_reason:
        return False
    setting.unhealthy_reason, setting.unhealthy_at, setting.updated_at = reason, now, now
    refresh_node_gpus(session, row)
    return True


# ------------------------------------------------------------------------------------------ views
def allocations_by_gpu(session: Session) -> tuple[dict[tuple[str, int], int], set[tuple[str, int, int]]]:
    """Allocated milli per (node, GPU index), and the (node, GPU index, MIG position) held by replicas."""
    milli: dict[tuple[str, int], int] = defaultdict(int)
    instances: set[tuple[str, int, int]] = set()
    for replica in workload_repo.live_replicas(session):
        for g in replica.placement.get("gpus", []):
            milli[(replica.node, int(g["index"]))] += int(g["milli"])
            if g.get("mig_instance") is not None:
                instances.add((replica.node, int(g["index"]), int(g["mig_instance"])))
    return milli, instances


def gpu_view(node: str, data: Mapping[str, Any], setting: GpuSettingRow | None, allocated_milli: int,
             held: set[tuple[str, int, int]]) -> schemas.GpuInfo:
    """One card as the API shows it (from the node row's card, its settings and the allocations)."""
    index = int(data["index"])
    health = None
    if setting is not None and setting.unhealthy_reason:
        health = setting.unhealthy_reason
    elif setting is not None and setting.reconfiguring:
        health = RECONFIGURING
    elif not data.get("healthy", True):
        health = "discovery failed: the GPU does not answer"
    instances = [schemas.MigInstanceInfo(position=k, profile=m["profile"], uuid=m.get("uuid", ""),
                                         allocated=(node, index, k) in held)
                 for k, m in enumerate(data.get("mig_instances", []))]
    mps = None
    if setting is not None and setting.mps_state is not None:
        mps = schemas.MpsInfo(state=setting.mps_state, message=setting.mps_message, pid=setting.mps_pid,
                              checked_at=setting.mps_checked_at)
    return schemas.GpuInfo(
        index=index, model=data["model"], memory_mib=data["memory_mib"], mode=data["mode"],
        simulated=data.get("simulated", False), healthy=data.get("healthy", True), allocated_milli=allocated_milli,
        uuid=data.get("uuid", ""), health=health, mig_layout=setting.mig_layout if setting else None,
        mig_instances=instances, mps=mps)


def gpu_views(session: Session, row: NodeRow) -> list[schemas.GpuInfo]:
    """Every card of one node as the API shows it."""
    milli, held = allocations_by_gpu(session)
    settings = gpu_repo.settings_of(session, row.name)
    return [gpu_view(row.name, g, settings.get(int(g["index"])), milli.get((row.name, int(g["index"])), 0), held)
            for g in row.gpus]


def inventory_facts(row: NodeRow) -> dict[str, Any]:
    """The NodeInfo fields about how the node's GPUs were found."""
    inventory = row.gpu_inventory or {}
    return {"gpu_backend": row.gpu_backend, "driver_version": inventory.get("driver_version"),
            "cuda_version": inventory.get("cuda_version"), "gpu_unavailable": inventory.get("unavailable")}
