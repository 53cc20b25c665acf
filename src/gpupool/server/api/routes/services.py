"""Services: list, show, scale, update, rollback (`gpupool service ...`). The gateway itself is in routes/gateway.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from gpupool.api import service_schemas as api
from gpupool.server.api import schemas
from gpupool.server.api.deps import PrincipalDep, ServicesDep
from gpupool.server.api.routes.workloads import ERRORS
from gpupool.server.gateway import Gateway
from gpupool.server.services import inference
from gpupool.server.services.workloads import load_spec_input

router = APIRouter(prefix="/services", tags=["services"])
ServiceName = Annotated[str, Path(min_length=1, max_length=63, description="The service's name")]


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


@router.get("", response_model=list[api.ServiceSummary], responses=ERRORS)
def list_services(request: Request, services: ServicesDep, principal: PrincipalDep) -> list[api.ServiceSummary]:
    """Running services you may see: models, replica bounds, ready replicas and load."""
    with services.db.session(write=False) as session:
        return inference.list_services(session, _gateway(request), principal)


@router.get("/{name}", response_model=api.ServiceDetail, responses=ERRORS)
def show(name: ServiceName, request: Request, services: ServicesDep, principal: PrincipalDep) -> api.ServiceDetail:
    """One service: its replicas (ready, draining, in flight), spec and history (scaling decisions)."""
    with services.db.session(write=False) as session:
        return inference.show(session, _gateway(request), principal, name)


@router.post("/{name}/scale", response_model=api.ServiceDetail, responses=ERRORS)
def scale(name: ServiceName, body: api.ScaleRequest, request: Request, services: ServicesDep,
          principal: PrincipalDep) -> api.ServiceDetail:
    """Set the service's replica bounds (min, max); the autoscaler converges to them."""
    with services.db.session() as session:
        inference.scale(session, principal, name, body, services.clock())
    return _after_change(request, services, principal, name)


@router.post("/{name}/update", response_model=api.ServiceDetail, responses=ERRORS)
def update(name: ServiceName, body: schemas.SubmitRequest, request: Request, services: ServicesDep,
           principal: PrincipalDep) -> api.ServiceDetail:
    """Roll out a new spec (YAML text or an object, kind: service, same name): new replicas start, take the
    traffic once ready, the old ones drain and stop."""
    data = load_spec_input(body)
    with services.db.session() as session:
        inference.update(session, principal, name, data, services.clock(), feasibility=services.feasibility)
    return _after_change(request, services, principal, name)


@router.post("/{name}/rollback", response_model=api.ServiceDetail, responses=ERRORS)
def rollback(name: ServiceName, request: Request, services: ServicesDep, principal: PrincipalDep) -> api.ServiceDetail:
    """Roll back to the spec before the current one (a new revision, rolled out like an update)."""
    with services.db.session() as session:
        inference.rollback(session, principal, name, services.clock(), services.feasibility)
    return _after_change(request, services, principal, name)


def _after_change(request: Request, services: ServicesDep, principal: PrincipalDep, name: str) -> api.ServiceDetail:
    _gateway(request).wake_autoscaler()
    with services.db.session(write=False) as session:
        return inference.show(session, _gateway(request), principal, name)
