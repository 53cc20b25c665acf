"""Health and identity."""

from __future__ import annotations

from fastapi import APIRouter

from gpupool import __version__
from gpupool.server.api import schemas
from gpupool.server.api.deps import PrincipalDep, ServicesDep
from gpupool.server.services import accounts

router = APIRouter()


@router.get("/healthz", response_model=schemas.Health, tags=["system"])
def healthz() -> schemas.Health:
    """Liveness: answers without a token as soon as the server is up."""
    return schemas.Health(status="ok", version=__version__)


@router.get("/api/v1/whoami", response_model=schemas.User, tags=["accounts"])
def whoami(services: ServicesDep, principal: PrincipalDep) -> schemas.User:
    """The user the token belongs to, with their projects and roles."""
    with services.db.session(write=False) as session:
        return accounts.whoami(session, principal)
