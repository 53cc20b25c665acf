"""Cordon, uncordon and drain nodes (administrators)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import Field

from gpupool.api.schemas import Model
from gpupool.server.api.deps import PrincipalDep, ServicesDep
from gpupool.server.api.routes.workloads import ERRORS
from gpupool.server.services import cordon

router = APIRouter(prefix="/nodes/{node}", tags=["nodes"])
NodeName = Annotated[str, Path(max_length=63, description="The node's name")]


class CordonSet(Model):
    """POST /nodes/{node}/cordon: why (shown on the node)."""

    reason: str = Field("", max_length=cordon.MAX_REASON_CHARS)


class CordonChange(Model):
    """What a cordon, uncordon or drain did: the node, whether it is cordoned now, whether this call changed
    that, and (drain) the workloads preempted to move elsewhere."""

    node: str
    cordoned: bool
    changed: bool
    preempted: list[int] = Field(default_factory=list)


@router.post("/cordon", response_model=CordonChange, responses=ERRORS)
def cordon_node(node: NodeName, services: ServicesDep, principal: PrincipalDep,
                body: CordonSet | None = None) -> CordonChange:
    """Place no new work on the node until it is uncordoned (what runs there keeps running); the body's
    reason is optional. Idempotent."""
    with services.db.session() as session:
        changed = cordon.cordon(session, principal, node, body.reason if body else "", services.clock())
    return CordonChange(node=node, cordoned=True, changed=changed)


@router.post("/uncordon", response_model=CordonChange, responses=ERRORS)
def uncordon_node(node: NodeName, services: ServicesDep, principal: PrincipalDep) -> CordonChange:
    """Let the node take new work again. Idempotent."""
    with services.db.session() as session:
        changed = cordon.uncordon(session, principal, node)
    services.wake_scheduler()
    return CordonChange(node=node, cordoned=False, changed=changed)


@router.post("/drain", response_model=CordonChange, responses=ERRORS)
def drain_node(node: NodeName, services: ServicesDep, principal: PrincipalDep) -> CordonChange:
    """Cordon the node and preempt the workloads running on it (they are requeued and run elsewhere)."""
    with services.db.session() as session:
        moved = cordon.drain(session, principal, node, services.clock())
    services.wake_reconciler()
    services.wake_scheduler()
    return CordonChange(node=node, cordoned=True, changed=True, preempted=moved)
