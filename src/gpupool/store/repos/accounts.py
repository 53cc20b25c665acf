"""Users, API tokens, projects and memberships."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gpupool.store.orm import MembershipRow, ProjectRow, ServiceTokenRow, TokenRow, UserRow
from gpupool.store.setup_cache import cached


def count_users(session: Session) -> int:
    """How many users exist."""
    return int(session.scalar(select(func.count()).select_from(UserRow)) or 0)


def user_by_name(session: Session, name: str) -> UserRow | None:
    """The user called `name`, or None."""
    return session.scalar(select(UserRow).where(UserRow.name == name))


def user_by_id(session: Session, user_id: int) -> UserRow | None:
    """The user with this id, or None."""
    return session.get(UserRow, user_id)


def list_users(session: Session) -> Sequence[UserRow]:
    """Every user, by name."""
    return session.scalars(select(UserRow).order_by(UserRow.name)).all()


def token_by_hash(session: Session, token_hash: str) -> tuple[TokenRow, UserRow | None, list[MembershipRow]] | None:
    """The token row with this SHA-256, its user (None when the user no longer exists) and the user's
    memberships, in one query; None for an unknown hash."""
    rows = session.execute(select(TokenRow, UserRow, MembershipRow)
                           .outerjoin(UserRow, UserRow.id == TokenRow.user_id)
                           .outerjoin(MembershipRow, MembershipRow.user_id == UserRow.id)
                           .where(TokenRow.token_hash == token_hash)).all()
    if not rows:
        return None
    return rows[0][0], rows[0][1], [row[2] for row in rows if row[2] is not None]


def service_token_exists(session: Session, token_hash: str) -> bool:
    """True when a service token (revoked or not) has this SHA-256."""
    return session.scalar(select(ServiceTokenRow.id).where(ServiceTokenRow.token_hash == token_hash)) is not None


def tokens_of(session: Session, user_id: int) -> Sequence[TokenRow]:
    """A user's tokens, oldest first."""
    return session.scalars(select(TokenRow).where(TokenRow.user_id == user_id).order_by(TokenRow.id)).all()


def project_by_name(session: Session, name: str) -> ProjectRow | None:
    """The project called `name`, or None."""
    return session.scalar(select(ProjectRow).where(ProjectRow.name == name))


def list_projects(session: Session, ids: set[int] | None = None) -> Sequence[ProjectRow]:
    """Projects by name (only those in `ids` when given)."""
    query = select(ProjectRow).order_by(ProjectRow.name)
    if ids is not None:
        query = query.where(ProjectRow.id.in_(sorted(ids)))
    return session.scalars(query).all()


def memberships_of_user(session: Session, user_id: int) -> Sequence[MembershipRow]:
    """The user's memberships."""
    return session.scalars(select(MembershipRow).where(MembershipRow.user_id == user_id)).all()


def members_of_project(session: Session, project_id: int) -> Sequence[tuple[MembershipRow, UserRow]]:
    """(membership, user) pairs of a project, by user name."""
    rows = session.execute(
        select(MembershipRow, UserRow).join(UserRow, UserRow.id == MembershipRow.user_id)
        .where(MembershipRow.project_id == project_id).order_by(UserRow.name))
    return [(m, u) for m, u in rows]


def membership(session: Session, user_id: int, project_id: int) -> MembershipRow | None:
    """The user's membership of the project, or None."""
    return session.get(MembershipRow, (user_id, project_id))


def project_names(session: Session) -> dict[int, str]:
    """project id -> name for every project."""
    return dict(session.execute(select(ProjectRow.id, ProjectRow.name)).all())


def project_names_kept(session: Session) -> Mapping[int, str]:
    """`project_names`, read-only, answered from the setup cache while the store's setup sequence is unchanged
    (store/setup_cache.py)."""
    return cached(session, ("project_names",), lambda reading: MappingProxyType(project_names(reading)))


def user_names(session: Session, ids: set[int]) -> dict[int, str]:
    """user id -> name for the given ids."""
    if not ids:
        return {}
    query = select(UserRow.id, UserRow.name).where(UserRow.id.in_(sorted(ids)))
    return dict(session.execute(query).all())
