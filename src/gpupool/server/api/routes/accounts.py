"""Users, projects, memberships and tokens."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from gpupool.server.api import schemas
from gpupool.server.api.deps import PrincipalDep, ServicesDep
from gpupool.server.api.routes.workloads import ERRORS
from gpupool.server.services import accounts

router = APIRouter(tags=["accounts"])
Name = Annotated[str, Path(max_length=63)]


@router.get("/users", response_model=list[schemas.User], responses=ERRORS)
def list_users(services: ServicesDep, principal: PrincipalDep) -> list[schemas.User]:
    """Every user (administrators), else yourself."""
    with services.db.session(write=False) as session:
        return accounts.list_users(session, principal)


@router.post("/users", response_model=schemas.UserCreated, status_code=201, responses=ERRORS)
def create_user(body: schemas.UserCreate, services: ServicesDep, principal: PrincipalDep) -> schemas.UserCreated:
    """Create a user (administrators); the response holds their first token, shown once."""
    with services.db.session() as session:
        settings = services.settings
        return accounts.create_user(session, principal, body, services.clock(), trusted=settings.trusts_users,
                                    warning=None if settings.is_multi_user else settings.user_mode_text())


@router.get("/projects", response_model=list[schemas.Project], responses=ERRORS)
def list_projects(services: ServicesDep, principal: PrincipalDep) -> list[schemas.Project]:
    """Your projects (every project for administrators), with members and your role."""
    with services.db.session(write=False) as session:
        return accounts.list_projects(session, principal)


@router.post("/projects", response_model=schemas.Project, status_code=201, responses=ERRORS)
def create_project(body: schemas.ProjectCreate, services: ServicesDep, principal: PrincipalDep) -> schemas.Project:
    """Create a project and its queue (administrators)."""
    with services.db.session() as session:
        return accounts.create_project(session, principal, body, services.clock())


@router.put("/projects/{name}/members", response_model=schemas.Project, responses=ERRORS)
def set_member(name: Name, body: schemas.MemberSet, services: ServicesDep,
               principal: PrincipalDep) -> schemas.Project:
    """Give a user a role in the project (administrators and the project's admins)."""
    with services.db.session() as session:
        return accounts.set_member(session, principal, name, body, trusted=services.settings.trusts_users)


@router.delete("/projects/{name}/members/{user}", response_model=schemas.Project, responses=ERRORS)
def remove_member(name: Name, user: Name, services: ServicesDep, principal: PrincipalDep) -> schemas.Project:
    """Remove a user from the project (administrators and the project's admins)."""
    with services.db.session() as session:
        return accounts.remove_member(session, principal, name, user)


@router.get("/tokens", response_model=list[schemas.Token], responses=ERRORS)
def list_tokens(services: ServicesDep, principal: PrincipalDep,
                user: Annotated[str | None, Query(max_length=63)] = None) -> list[schemas.Token]:
    """Your tokens (administrators: `user`'s), without their secret."""
    with services.db.session(write=False) as session:
        return accounts.list_tokens(session, principal, user)


@router.post("/tokens", response_model=schemas.TokenCreated, status_code=201, responses=ERRORS)
def create_token(body: schemas.TokenCreate, services: ServicesDep, principal: PrincipalDep) -> schemas.TokenCreated:
    """A new token; its text is in the response and never shown again."""
    with services.db.session() as session:
        return accounts.create_token(session, principal, body, services.clock())


@router.delete("/tokens/{token_id}", response_model=schemas.Token, responses=ERRORS)
def revoke_token(token_id: Annotated[int, Path(ge=1, le=schemas.MAX_ID)], services: ServicesDep,
                 principal: PrincipalDep) -> schemas.Token:
    """Revoke a token (yours; administrators: anyone's)."""
    with services.db.session() as session:
        return accounts.revoke_token(session, principal, token_id, services.clock())
