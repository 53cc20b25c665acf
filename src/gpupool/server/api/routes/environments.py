"""Python environments: create (built by uv, cached by spec hash), list, show (with the build log), remove."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from gpupool.api import environment_schemas as es
from gpupool.domain.environments import parse_environment, parse_requirements
from gpupool.server.api import schemas
from gpupool.server.api.deps import PrincipalDep, ServicesDep
from gpupool.server.environments import Environment, EnvironmentStore, Viewer
from gpupool.server.services.auth import Principal

router = APIRouter(prefix="/environments", tags=["environments"])
ERRORS: dict[int | str, dict[str, object]] = {code: {"model": schemas.ErrorBody} for code in (401, 403, 404, 409, 422)}
Name = Annotated[str, Path(pattern=schemas.NAME_PATTERN, description="The environment's name")]


def _store(services: ServicesDep) -> EnvironmentStore:
    if services.environments is None:
        raise RuntimeError("the server was built without environments")
    return services.environments


def _info(env: Environment) -> es.EnvironmentInfo:
    return es.EnvironmentInfo(name=env.name, python=env.spec.python, requirements=list(env.spec.requirements),
                              hash=env.spec.hash, owner=env.owner, created_at=env.created_at, path=str(env.path),
                              shared=env.shared, size_bytes=env.size_bytes, cached=env.cached)


def _viewer(principal: Principal) -> Viewer:
    return Viewer(principal.name, principal.is_admin)


@router.post("", response_model=es.EnvironmentInfo, status_code=201, responses=ERRORS)
def create(body: es.EnvironmentCreate, services: ServicesDep, principal: PrincipalDep) -> es.EnvironmentInfo:
    """Build an environment with uv (blocks until built; a spec built before is found in the cache) and name
    it: shared when an administrator creates it, else the caller's own, within their disk quota. 422 with the
    end of the build log when the build fails, or naming usage and quota when it would exceed the quota."""
    packages = parse_requirements(body.packages, "packages") + parse_requirements(body.requirements)
    spec = parse_environment(body.name, body.python, packages)
    return _info(_store(services).create(spec, _viewer(principal), services.clock()))


@router.get("", response_model=list[es.EnvironmentInfo], responses=ERRORS)
def list_environments(services: ServicesDep, principal: PrincipalDep) -> list[es.EnvironmentInfo]:
    """The environments the caller sees: the shared ones and their own (an administrator: all)."""
    return [_info(e) for e in _store(services).list(_viewer(principal))]


@router.get("/{name}", response_model=es.EnvironmentDetail, responses=ERRORS)
def show(name: Name, services: ServicesDep, principal: PrincipalDep) -> es.EnvironmentDetail:
    """One environment with its build log."""
    store = _store(services)
    viewer = _viewer(principal)
    return es.EnvironmentDetail(**_info(store.get(name, viewer)).model_dump(), log=store.log(name, viewer))


@router.delete("/{name}", response_model=es.EnvironmentInfo, responses=ERRORS)
def remove(name: Name, services: ServicesDep, principal: PrincipalDep) -> es.EnvironmentInfo:
    """Remove an environment (its owner or an administrator); its build goes when no other name uses it."""
    return _info(_store(services).remove(name, _viewer(principal)))
