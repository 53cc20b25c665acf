"""From a discovered GPU inventory to the scheduler's `Gpu` objects: mode, NVLink group, MIG instances,
health."""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Mapping

from gpupool.domain.nodes import Gpu, MigInstance
from gpupool.domain.resources import SharingMode, normalise_model
from gpupool.gpu.mig import model_compute_slices
from gpupool.gpu.types import GpuInfo, GpuInventory

log = logging.getLogger(__name__)
_PROFILE_IN_NAME = re.compile(r"(\d+g\.\d+gb)(\+me)?", re.IGNORECASE)


def nvlink_groups(gpus: Collection[GpuInfo]) -> dict[int, int | None]:
    """GPU index -> NVLink group: the connected components of the NVLink peer graph, each named by its
    lowest GPU index. A GPU without NVLink peers gets None."""
    known = {g.index for g in gpus}
    neighbours: dict[int, set[int]] = {i: set() for i in known}
    for g in gpus:
        for peer in g.nvlink_peers:
            if peer in known and peer != g.index:
                neighbours[g.index].add(peer)
                neighbours[peer].add(g.index)
    groups: dict[int, int | None] = {}
    for start in sorted(known):
        if start in groups:
            continue
        component, todo = {start}, [start]
        while todo:
            for peer in neighbours[todo.pop()]:
                if peer not in component:
                    component.add(peer)
                    todo.append(peer)
        group = min(component) if len(component) > 1 else None
        groups.update(dict.fromkeys(component, group))
    return groups


def mig_profile_name(reported: str) -> str | None:
    """The schedulable profile in a MIG device name or profile ("NVIDIA A100-SXM4-40GB MIG 1g.5gb" ->
    "1g.5gb"; "1g.10gb+me" -> "1g.10gb", media extensions do not change compute or memory); None when
    the name holds no profile gpupool can schedule."""
    match = _PROFILE_IN_NAME.search(reported)
    return match.group(1).lower() if match else None


def to_domain_gpus(
    inventory: GpuInventory,
    modes: Mapping[int, SharingMode] | None = None,
    unhealthy: Collection[int] = (),
    simulated: bool = False,
) -> tuple[Gpu, ...]:
    """The scheduler's view of a node's GPUs.

    `modes` is the sharing mode the admin set per GPU index (default exclusive). A GPU whose MIG mode is on
    is always in `mig` mode, with one `MigInstance` per MIG device (its UUID and profile); a GPU the admin
    put in `mig` mode whose hardware MIG mode is still off keeps `mig` mode with no instances (nothing can
    be placed on it until a layout is applied). `unhealthy` indices (XID/ECC errors) and cards whose
    discovery failed are marked unhealthy so that nothing new is placed there. `simulated` marks every card
    as having no real device behind it (a fake backend in a demo): replicas then see no CUDA device.
    """
    modes = modes or {}
    groups = nvlink_groups(inventory.gpus)
    result = []
    for info in sorted(inventory.gpus, key=lambda g: g.index):
        mode = SharingMode.MIG if info.mig_enabled else modes.get(info.index, SharingMode.EXCLUSIVE)
        instances = _mig_instances(info) if info.mig_enabled else ()
        result.append(Gpu(
            index=info.index,
            model=normalise_model(info.name),
            memory_mib=info.memory_mib,
            mode=mode,
            uuid=info.uuid,
            nvlink_group=None if mode == SharingMode.MIG else groups.get(info.index),
            mig_instances=instances,
            compute_slices=model_compute_slices(info.name, info.memory_mib),
            healthy=info.error is None and info.index not in unhealthy,
            simulated=simulated,
        ))
    return tuple(result)


def _mig_instances(info: GpuInfo) -> tuple[MigInstance, ...]:
    instances = []
    for device in sorted(info.mig_devices, key=lambda d: (d.gpu_instance_id or 0, d.compute_instance_id or 0, d.uuid)):
        profile = mig_profile_name(device.profile)
        if profile is None:
            log.warning("GPU %d: MIG device %s has profile %r, which gpupool cannot schedule; it is left out",
                        info.index, device.uuid, device.profile)
            continue
        instances.append(MigInstance(profile, device.uuid))
    return tuple(instances)
