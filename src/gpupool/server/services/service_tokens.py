"""Service tokens: credentials for applications that are not users. A service token belongs to one project
and may call the gateway (`/v1/...`, `/services/<name>/...`) for that project's services as a member would;
every other part of the API refuses it (`gpupool.server.services.auth.authenticate`). An administrator or an
admin of the project creates, lists and revokes them; the token text is shown once, stored as its SHA-256."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from types import MappingProxyType

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gpupool.api import schemas
from gpupool.domain.accounts import ProjectRole
from gpupool.domain.errors import AuthenticationError, ConflictError, NotFoundError, PermissionDeniedError
from gpupool.domain.specs import validate_name
from gpupool.server.services.auth import Principal, hash_token
from gpupool.store.orm import ProjectRow, ServiceTokenRow
from gpupool.store.repos import accounts

SERVICE_TOKEN_PREFIX = "gps_"  # tells a service token from a user's (gpp_) at a glance


def principal_of(session: Session, token: str) -> Principal | None:
    """The gateway caller a service token stands for: a member of its project only; None when `token` is no
    service token; AuthenticationError when it was revoked."""
    row = session.scalar(select(ServiceTokenRow).where(ServiceTokenRow.token_hash == hash_token(token)))
    if row is None:
        return None
    if row.revoked_at is not None:
        raise AuthenticationError(f"service token {row.name} was revoked; ask an admin of its project for a new one")
    return Principal(0, f"service token {row.name}", False, MappingProxyType({row.project_id: ProjectRole.MEMBER}))


def create(session: Session, principal: Principal, project: str, name: str, now: float) -> schemas.ServiceTokenCreated:
    """A new service token of `project` named `name` (unique in the project); the text is returned once."""
    row_project = _managed_project(session, principal, project)
    token = SERVICE_TOKEN_PREFIX + secrets.token_urlsafe(32)  # 256 bits, like user tokens
    row = ServiceTokenRow(project_id=row_project.id, name=validate_name(name), token_hash=hash_token(token),
                          prefix=token[:10], created_by=principal.name, created_at=now)
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        raise ConflictError(f"project {project} already has a service token named {name!r}; choose another "
                            "name or revoke it first") from None
    return schemas.ServiceTokenCreated(token=token, info=_view(row, project))


def list_tokens(session: Session, principal: Principal, project: str) -> list[schemas.ServiceToken]:
    """The project's service tokens, oldest first (revoked ones included)."""
    row_project = _managed_project(session, principal, project)
    return [_view(r, project) for r in _tokens_of(session, row_project.id)]


def revoke(session: Session, principal: Principal, project: str, token_id: int, now: float) -> schemas.ServiceToken:
    """Revoke one of the project's service tokens: it is refused from now on. Idempotent."""
    row_project = _managed_project(session, principal, project)
    row = session.get(ServiceTokenRow, token_id)
    if row is None or row.project_id != row_project.id:
        raise NotFoundError(f"project {project} has no service token {token_id}; see its list")
    if row.revoked_at is None:
        row.revoked_at = now
    return _view(row, project)


def _managed_project(session: Session, principal: Principal, project: str) -> ProjectRow:
    row = accounts.project_by_name(session, validate_name(project, "project"))
    if row is None or not principal.can_read(row.id):
        raise NotFoundError(f"project {project!r} not found among your projects")
    if not principal.can_manage(row.id):
        raise PermissionDeniedError(f"only administrators and admins of project {project} may manage its service "
                                    "tokens")
    return row


def _tokens_of(session: Session, project_id: int) -> Sequence[ServiceTokenRow]:
    return session.scalars(select(ServiceTokenRow).where(ServiceTokenRow.project_id == project_id)
                           .order_by(ServiceTokenRow.id)).all()


def _view(row: ServiceTokenRow, project: str) -> schemas.ServiceToken:
    return schemas.ServiceToken(id=row.id, name=row.name, project=project, prefix=row.prefix,
                                created_by=row.created_by, created_at=row.created_at,
                                revoked=row.revoked_at is not None)
