"""Administrators' GPU changes: the sharing mode of a card, its MIG layout, clearing an unhealthy mark; and
keeping MPS control daemons in line with the cards in `mps` mode.

Each change locks the node row, checks the running work in the same transaction, and recomputes the node's
cards (which bumps its `gpus_version`, so a scheduling cycle planned on the old cards binds nothing there).
A MIG change talks to NVML between two transactions: the first marks the card as being reconfigured (the
scheduler places nothing on it), the second stores what discovery finds afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gpupool.domain.errors import ConflictError, GpupoolError, NotFoundError, ValidationError
from gpupool.domain.resources import SharingMode
from gpupool.gpu.inventory import mig_profile_name
from gpupool.gpu.mig import MigApplyResult, MigModel, apply_layout, catalog_for, parse_layout, validate_layout
from gpupool.gpu.mps import MpsState, MpsStatus
from gpupool.gpu.sharing import mode_change_conflict
from gpupool.gpu.types import GpuInfo, GpuInventory
from gpupool.server.api import schemas
from gpupool.server.api.gpu_schemas import GpuChange
from gpupool.server.gpu_runtime import GpuRuntime, NodeGpus
from gpupool.server.local_node import CLUSTER_NODE_REFUSAL
from gpupool.server.services import gpus
from gpupool.server.services.auth import Principal
from gpupool.store.convert import gpu_from_json
from gpupool.store.db import Database
from gpupool.store.orm import GpuSettingRow, NodeRow
from gpupool.store.repos import gpus as gpu_repo

log = logging.getLogger("gpupool.gpus")
SIMULATED_MPS = "simulated"


def _setting(row: NodeRow, settings: dict[int, GpuSettingRow], index: int) -> GpuSettingRow:
    setting = settings.get(index)
    if setting is None:
        raise NotFoundError(f"node {row.name} has no settings for GPU {index}; it was not discovered there")
    return setting


def _inventory_card(row: NodeRow, index: int) -> GpuInfo:
    inventory = GpuInventory.from_dict(row.gpu_inventory or {})
    for info in inventory.gpus:
        if info.index == index:
            return info
    raise NotFoundError(f"node {row.name} has no discovered GPU {index}")


def _view(db: Database, node: str, index: int) -> schemas.GpuInfo:
    with db.session(write=False) as session:
        row = gpus.node_or_404(session, node)
        return next(g for g in gpus.gpu_views(session, row) if g.index == index)


# ---------------------------------------------------------------------------------------- sharing
def set_sharing(db: Database, runtime: GpuRuntime, principal: Principal, node: str, index: int, mode: str,
                now: float) -> GpuChange:
    """Put GPU `index` of `node` in sharing `mode` (administrators). ConflictError when running work on the
    card would not stay valid (see gpu.sharing.mode_change_conflict) or MIG is enabled on it; MPS daemons
    are started or stopped to match afterwards."""
    principal.require_admin("change GPU sharing modes")
    wanted = SharingMode(mode)
    if wanted in (SharingMode.MPS, SharingMode.MIG):
        _refuse_on_cluster_node(runtime, node, index, f"{wanted.value} mode")
    with db.session() as session:
        row = gpus.node_or_404(session, node, lock=True)
        card = gpus.card_of(row, index)
        info = _inventory_card(row, index)
        if wanted == SharingMode.MIG and catalog_for(info.name, info.memory_mib) is None:
            raise ValidationError(f"GPU {index} of {node} ({card.model}) does not support MIG; MIG GPUs are the "
                                  "A100, A30, H100 80GB and H200", "mode")
        if info.mig_enabled and wanted != SharingMode.MIG:
            raise ConflictError(f"MIG mode is enabled on GPU {index} of {node}; turn it off first with "
                                f"`gpupool nodes set-mig {node} {index} none`")
        conflict = mode_change_conflict(card, wanted, gpus.running_assignments(session, node, index))
        if conflict is not None:
            raise ConflictError(conflict)
        settings = gpu_repo.settings_of(session, node)
        setting = _setting(row, settings, index)
        changed = setting.sharing_mode != wanted.value
        if changed:
            setting.sharing_mode, setting.updated_at = wanted.value, now
            gpus.refresh_node_gpus(session, row, settings)
    statuses = reconcile_mps(db, runtime, node, now)
    status = "changed" if changed else "unchanged"
    message = f"GPU {index} of {node} is {'now' if changed else 'already'} in {wanted.value} mode"
    mps = statuses.get(index)
    if mps is not None and mps.state == MpsState.FAILED:
        message += f"; its MPS daemon failed: {mps.message}"
    view = _view(db, node, index)
    return GpuChange(node=node, gpu=view, status=status, message=message, mps=view.mps)


def _refuse_on_cluster_node(runtime: GpuRuntime, node: str, index: int, what: str) -> None:
    """ConflictError for a change that needs an MPS daemon or MIG calls on the real cards of a cluster node:
    the server would run them on its own machine, and the node's agent does not carry them out yet."""
    local = runtime.nodes.get(node)
    if local is not None and local.local.remote and not local.simulated:
        raise ConflictError(f"cannot set {what} on GPU {index} of {node}: {CLUSTER_NODE_REFUSAL}; use exclusive "
                            "or shared mode on this node")


# -------------------------------------------------------------------------------------------- MPS
def reconcile_mps(db: Database, runtime: GpuRuntime, node: str, now: float) -> dict[int, MpsStatus]:
    """Start the MPS daemon of every card of a local node in `mps` mode and stop the others', then store
    each card's daemon state. Simulated cards need no daemon (their replicas see no device). Returns the
    statuses by GPU index (empty for nodes this server does not run)."""
    local = runtime.nodes.get(node)
    if local is None:
        return {}
    with db.session(write=False) as session:
        row = gpus.node_or_404(session, node)
        cards = [gpu_from_json(g) for g in row.gpus]
    wanted = {c.index: c.uuid for c in cards if c.mode == SharingMode.MPS}
    if local.simulated:
        statuses = {i: MpsStatus(i, MpsState.STOPPED, None, "simulated GPU: no MPS daemon is needed", now)
                    for i in wanted}
    else:
        with runtime.mps_lock:
            found = runtime.mps.reconcile(wanted, {c.index: c.uuid for c in cards}, now)
        statuses = {s.gpu_index: s for s in found}
    with db.session() as session:
        settings = gpu_repo.settings_of(session, node)
        for index, setting in settings.items():
            status = statuses.get(index)
            if index not in wanted and (status is None or status.state == MpsState.STOPPED):
                setting.mps_state, setting.mps_message, setting.mps_pid = None, "", None
            elif status is not None:
                state = SIMULATED_MPS if local.simulated else status.state.value
                setting.mps_state, setting.mps_message, setting.mps_pid = state, status.message, status.pid
                setting.mps_checked_at = now
    for status in statuses.values():
        if status.state == MpsState.FAILED:
            log.warning("node %s: %s", node, status.message)
    return statuses


# -------------------------------------------------------------------------------------------- MIG
def set_mig(db: Database, runtime: GpuRuntime, principal: Principal, node: str, index: int, layout_text: str,
            clock: Callable[[], float]) -> GpuChange:
    """Partition GPU `index` of `node` into a MIG layout ("3g.40gb,2g.20gb,1g.10gb,1g.10gb"; "none" turns
    MIG off) through the node's MIG applier (administrators). ValidationError for a layout the model cannot
    hold, ConflictError when work runs on the card; `pending_reset` when MIG mode waits for a GPU reset."""
    principal.require_admin("change MIG layouts")
    layout = parse_layout(layout_text)
    _refuse_on_cluster_node(runtime, node, index, "a MIG layout")
    local = runtime.node(node)
    model = _begin_mig_change(db, node, index, layout, clock())
    result = _apply_mig(db, local, node, index, model, layout, clock)
    view = _view(db, node, index)
    return GpuChange(node=node, gpu=view, status=result.status, message=result.message,
                     pending_reset=result.status == "pending_reset")


def restore_mig_layouts(db: Database, runtime: GpuRuntime, node: str, clock: Callable[[], float]) -> list[str]:
    """Apply again the stored MIG layout of every idle card of a local node whose discovered instances differ
    from it (MIG instances do not survive a reboot, nor a restart of a fake node). Returns what happened, in
    words; a card with running work, or a layout NVML refuses, is left as it is (and said so)."""
    local = runtime.nodes.get(node)
    if local is None or local.local.remote:  # a cluster node's MIG is not applied from here (not yet)
        return []
    with db.session(write=False) as session:
        row = gpus.node_or_404(session, node)
        inventory = GpuInventory.from_dict(row.gpu_inventory or {})
        stored = {i: s.mig_layout for i, s in gpu_repo.settings_of(session, node).items() if s.mig_layout}
        busy = {i for i in stored if gpus.running_assignments(session, node, i)}
    done = []
    for info in inventory.gpus:
        layout = parse_layout(stored.get(info.index) or "")
        found = sorted(mig_profile_name(d.profile) or d.profile for d in info.mig_devices)
        if not layout or found == sorted(layout):
            continue
        if info.index in busy:
            done.append(f"GPU {info.index} of {node}: MIG layout {','.join(layout)} not restored (work runs there)")
            continue
        try:
            model = _begin_mig_change(db, node, info.index, layout, clock())
        except GpupoolError as error:
            done.append(f"GPU {info.index} of {node}: MIG layout {','.join(layout)} not restored: {error}")
            continue
        result = _apply_mig(db, local, node, info.index, model, layout, clock)
        done.append(f"GPU {info.index} of {node}: MIG layout restored: {result.message}")
    return done


def _apply_mig(db: Database, local: NodeGpus, node: str, index: int, model: MigModel, layout: tuple[str, ...],
               clock: Callable[[], float]) -> MigApplyResult:
    """Apply a checked layout to a card marked as being reconfigured, then store what discovery finds."""
    try:
        with local.local.mig() as nvml, local.lock:
            result = apply_layout(nvml, index, model, layout, busy=False)
        inventory = local.discover()
    except Exception:
        _end_mig_change(db, node, index, None, None, clock())
        raise
    _end_mig_change(db, node, index, inventory, result, clock())
    return result


def _begin_mig_change(db: Database, node: str, index: int, layout: tuple[str, ...], now: float) -> MigModel:
    """Check the layout and that the card is idle, and mark it as being reconfigured; returns its MIG model."""
    with db.session() as session:
        row = gpus.node_or_404(session, node, lock=True)
        card = gpus.card_of(row, index)
        info = _inventory_card(row, index)
        model = catalog_for(info.name, info.memory_mib)
        if model is None:
            raise ValidationError(f"GPU {index} of {node} ({card.model}) does not support MIG; MIG GPUs are the "
                                  "A100, A30, H100 80GB and H200", "layout")
        if layout:
            validate_layout(model, layout)
        running = gpus.running_assignments(session, node, index)
        if running:
            raise ConflictError(f"GPU {index} of {node} has {len(running)} running replica(s); stop them (or wait "
                                "for them to end) before changing its MIG layout")
        settings = gpu_repo.settings_of(session, node)
        setting = _setting(row, settings, index)
        setting.reconfiguring, setting.updated_at = True, now
        gpus.refresh_node_gpus(session, row, settings)
    return model


def _end_mig_change(db: Database, node: str, index: int, inventory: GpuInventory | None,
                    result: MigApplyResult | None, now: float) -> None:
    """Store what discovery found after the change (nothing when it failed) and open the card again."""
    with db.session() as session:
        row = gpus.node_or_404(session, node, lock=True)
        settings = gpu_repo.settings_of(session, node)
        setting = _setting(row, settings, index)
        setting.reconfiguring, setting.updated_at = False, now
        if inventory is not None:
            row.gpu_inventory = inventory.to_dict()
        if result is not None:
            setting.mig_layout = ",".join(result.layout) if result.layout else None
            setting.sharing_mode = (SharingMode.EXCLUSIVE if result.status == "disabled" else SharingMode.MIG).value
        gpus.refresh_node_gpus(session, row, settings)


def adopt_discovered_gpus(db: Database, runtime: GpuRuntime, node: str, now: float) -> str:
    """Discover a local node's GPUs again and store them (inventory, settings, cards): for a node whose NVML
    was unavailable at start-up and works now (the backend retries nvmlInit). Returns what was found."""
    inventory = runtime.node(node).discover()
    with db.session() as session:
        row = gpus.node_or_404(session, node, lock=True)
        row.gpu_inventory = inventory.to_dict()
        settings = gpus.sync_settings(session, node, inventory, runtime.node(node).local.default_mode, now)
        gpus.refresh_node_gpus(session, row, settings)
    found = f"node {node}: NVML works now; {len(inventory.gpus)} GPU(s) found"
    log.info(found)
    return found


# ------------------------------------------------------------------------------------------ health
def clear_unhealthy(db: Database, runtime: GpuRuntime, principal: Principal, node: str, index: int,
                    now: float) -> GpuChange:
    """Declare a GPU healthy again after an XID or ECC error (administrators; e.g. after a GPU reset): the
    scheduler places on it again, and later errors mark it again."""
    principal.require_admin("clear GPU health marks")
    with db.session() as session:
        row = gpus.node_or_404(session, node, lock=True)
        gpus.card_of(row, index)
        settings = gpu_repo.settings_of(session, node)
        setting = _setting(row, settings, index)
        reason = setting.unhealthy_reason
        setting.unhealthy_reason, setting.unhealthy_at, setting.updated_at = None, None, now
        gpus.refresh_node_gpus(session, row, settings)
    local = runtime.nodes.get(node)
    if local is not None:
        with runtime.lock:
            local.monitor.clear_unhealthy(index)
    status, message = ("cleared", f"GPU {index} of {node} is healthy again (it was marked: {reason})") if reason \
        else ("unchanged", f"GPU {index} of {node} was not marked unhealthy")
    return GpuChange(node=node, gpu=_view(db, node, index), status=status, message=message)
