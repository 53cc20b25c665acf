"""Nodes' GPUs: one node's detail, and administrators' changes (sharing mode, MIG layout, health mark)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from gpupool.server.api import gpu_schemas, schemas
from gpupool.server.api.deps import PrincipalDep, ServicesDep
from gpupool.server.api.routes.workloads import ERRORS
from gpupool.server.services import gpu_admin, pool

router = APIRouter(prefix="/nodes/{node}", tags=["gpus"])
NodeName = Annotated[str, Path(max_length=63, description="The node")]
GpuIndex = Annotated[int, Path(ge=0, le=1023, description="The GPU's index on the node")]


@router.get("", response_model=schemas.NodeInfo, responses=ERRORS)
def node(node: NodeName, services: ServicesDep, _principal: PrincipalDep) -> schemas.NodeInfo:
    """One node: capacity, allocation, and each GPU's mode, health, MIG instances and MPS daemon."""
    with services.db.session(write=False) as session:
        return pool.node_info(session, node)


@router.put("/gpus/{index}/sharing", response_model=gpu_schemas.GpuChange, responses=ERRORS)
def set_sharing(node: NodeName, index: GpuIndex, body: gpu_schemas.SharingSet, services: ServicesDep,
                principal: PrincipalDep) -> gpu_schemas.GpuChange:
    """Set a GPU's sharing mode (administrators): exclusive, shared, mps or mig. 409 when work running on
    the card would not stay valid."""
    change = gpu_admin.set_sharing(services.db, services.gpu_runtime(), principal, node, index, body.mode,
                                   services.clock())
    services.wake_scheduler()
    return change


@router.put("/gpus/{index}/mig", response_model=gpu_schemas.GpuChange, responses=ERRORS)
def set_mig(node: NodeName, index: GpuIndex, body: gpu_schemas.MigSet, services: ServicesDep,
            principal: PrincipalDep) -> gpu_schemas.GpuChange:
    """Apply a MIG layout to a GPU (administrators); "none" turns MIG off. 422 for a layout the model
    cannot hold, 409 while work runs on the card; `pending_reset` when the GPU needs a reset first."""
    change = gpu_admin.set_mig(services.db, services.gpu_runtime(), principal, node, index, body.layout,
                               services.clock)
    services.wake_scheduler()
    return change


@router.post("/gpus/{index}/clear-unhealthy", response_model=gpu_schemas.GpuChange, responses=ERRORS)
def clear_unhealthy(node: NodeName, index: GpuIndex, services: ServicesDep,
                    principal: PrincipalDep) -> gpu_schemas.GpuChange:
    """Declare a GPU healthy again after an XID or ECC error (administrators)."""
    change = gpu_admin.clear_unhealthy(services.db, services.gpu_runtime(), principal, node, index,
                                       services.clock())
    services.wake_scheduler()
    return change
