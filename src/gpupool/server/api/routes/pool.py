"""Nodes and queues."""

from __future__ import annotations

from fastapi import APIRouter, Path

from gpupool.server.api import schemas
from gpupool.server.api.deps import PrincipalDep, ServicesDep
from gpupool.server.api.routes.workloads import ERRORS
from gpupool.server.services import pool

router = APIRouter(tags=["pool"])


@router.get("/nodes", response_model=list[schemas.NodeInfo], responses=ERRORS)
def nodes(services: ServicesDep, _principal: PrincipalDep) -> list[schemas.NodeInfo]:
    """Every node: capacity, allocation, GPUs (simulated ones are marked)."""
    with services.db.session(write=False) as session:
        return pool.list_nodes(session)


@router.get("/queues", response_model=list[schemas.Queue], responses=ERRORS)
def queues(services: ServicesDep, _principal: PrincipalDep) -> list[schemas.Queue]:
    """Every queue: guarantee, limit, weight, lending, usage, running and pending counts."""
    with services.db.session(write=False) as session:
        return pool.list_queues(session)


@router.put("/queues/{name}", response_model=schemas.Queue, responses=ERRORS)
def update_queue(body: schemas.QueueUpdate, services: ServicesDep, principal: PrincipalDep,
                 name: str = Path(max_length=63)) -> schemas.Queue:
    """Change a queue's guarantee, limit, weight or flags (administrators)."""
    with services.db.session() as session:
        queue = pool.update_queue(session, principal, name, body, services.clock())
    services.wake_scheduler()
    return queue
