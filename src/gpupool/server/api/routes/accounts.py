"""Users, projects, memberships and tokens."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from gpupool.server.api import schemas
from gpupool.server.api.deps import PrincipalDep, ServicesDep
from gpupool.server.api.routes.workloads import ERRORS
from gpupool.server.services import accounts, service_tokens

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


@router.put("/projects/{name}/idle-cap", response_model=schemas.Project, responses=ERRORS)
def set_idle_cap(name: Name, body: schemas.ProjectIdleCap, services: ServicesDep,
                 principal: PrincipalDep) -> schemas.Project:
    """Cap the idle_timeout of the project's notebooks, or remove the cap with `none` (administrators and the
    project's admins)."""
    with services.db.session() as session:
        return accounts.set_idle_cap(session, principal, name, body)


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


@router.post("/projects/{name}/service-tokens", response_model=schemas.ServiceTokenCreated, status_code=201,
             responses=ERRORS)
def create_service_token(name: Name, body: schemas.ServiceTokenCreate, services: ServicesDep,
                         principal: PrincipalDep) -> schemas.ServiceTokenCreated:
    """A token for an application that is not a user: it may call the gateway for this project's services
    and nothing else (administrators and the project's admins); the token is shown this once."""
    with services.db.session() as session:
        return service_tokens.create(session, principal, name, body.name, services.clock())


@router.get("/projects/{name}/service-tokens", response_model=list[schemas.ServiceToken], responses=ERRORS)
def list_service_tokens(name: Name, services: ServicesDep, principal: PrincipalDep) -> list[schemas.ServiceToken]:
    """The project's service tokens (administrators and the project's admins)."""
    with services.db.session(write=False) as session:
        return service_tokens.list_tokens(session, principal, name)


@router.delete("/projects/{name}/service-tokens/{token_id}", response_model=schemas.ServiceToken, responses=ERRORS)
def revoke_service_token(name: Name, token_id: Annotated[int, Path(ge=1, le=schemas.MAX_ID)], services: ServicesDep,
                         principal: PrincipalDep) -> schemas.ServiceToken:
    """Revoke a service token of the project: refused from now on (administrators and the project's admins)."""
    with services.db.session() as session:
        return service_tokens.revoke(session, principal, name, token_id, services.clock())
