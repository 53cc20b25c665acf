"""Authentication (bearer tokens, stored as SHA-256) and the caller's permissions (the Principal)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from sqlalchemy.orm import Session

from gpupool.domain.accounts import ProjectRole
from gpupool.domain.errors import AuthenticationError, PermissionDeniedError
from gpupool.store.orm import MembershipRow, TokenRow, UserRow
from gpupool.store.repos import accounts
from gpupool.store.setup_cache import cached, keep_again

TOKEN_PREFIX = "gpp_"
MAX_TOKEN_CHARS = 256
LAST_USED_RESOLUTION_S = 60.0  # write last_used_at at most once a minute per token


def new_token() -> str:
    """A fresh random API token (256 bits of entropy)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The stored form of a token: hex SHA-256 (tokens are random, so no salt or stretching is needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling and what they may do: global admin flag and a role per project id."""

    user_id: int
    name: str
    is_admin: bool
    roles: Mapping[int, ProjectRole] = field(default_factory=lambda: MappingProxyType({}))

    def readable_projects(self) -> frozenset[int] | None:
        """Ids of the projects whose workloads the caller may see (None: every project)."""
        return None if self.is_admin else frozenset(self.roles)

    def can_read(self, project_id: int) -> bool:
        """True when the caller may see the project's workloads."""
        return self.is_admin or project_id in self.roles

    def can_write(self, project_id: int) -> bool:
        """True when the caller may submit and cancel the project's workloads."""
        role = self.roles.get(project_id)
        return self.is_admin or (role is not None and role.can_write)

    def can_manage(self, project_id: int) -> bool:
        """True when the caller may change the project's members."""
        role = self.roles.get(project_id)
        return self.is_admin or (role is not None and role.can_manage)

    def require_admin(self, action: str) -> None:
        """Raise PermissionDeniedError unless the caller is an administrator."""
        if not self.is_admin:
            raise PermissionDeniedError(f"only administrators may {action}; ask an administrator of this pool")


def principal_for(session: Session, user: UserRow) -> Principal:
    """The Principal of a user, with their current memberships."""
    return principal_from(user, accounts.memberships_of_user(session, user.id))


def principal_from(user: UserRow, memberships: Iterable[MembershipRow]) -> Principal:
    """The Principal of a user with these memberships (all of theirs)."""
    roles = {m.project_id: ProjectRole(m.role) for m in memberships}
    return Principal(user.id, user.name, user.is_admin, MappingProxyType(roles))


@dataclass(frozen=True, slots=True)
class Authenticated:
    """A caller and, when its token's last-use time is stale, the token id to `touch_token` (in a write)."""

    principal: Principal
    stale_token_id: int | None


@dataclass(frozen=True, slots=True)
class _ValidToken:
    """What a valid token's rows say: its caller, its id and its last recorded use (kept in the setup cache)."""

    principal: Principal
    token_id: int
    last_used_at: float | None


def authenticate(session: Session, authorization: str | None, now: float) -> Authenticated:
    """The caller of a `Bearer <token>` Authorization header (read-only); AuthenticationError when the header is
    missing or malformed, or the token unknown or revoked. A valid token's caller is kept while the store's
    setup sequence is unchanged (store/setup_cache.py: revoking a token, removing a user or changing a role
    changes it), so a repeated caller costs one primary-key read."""
    digest = hash_token(_bearer(authorization))
    key = ("caller", digest)
    found: list[tuple[TokenRow, UserRow | None, list[MembershipRow]] | None] = []  # what a read found

    def read(reading: Session) -> _ValidToken | None:
        found.append(accounts.token_by_hash(reading, digest))  # the token, its user and memberships: one query
        return _valid_token(found[-1], digest)

    valid = cached(session, key, read)
    if valid is None:  # never kept: `read` ran
        raise _refusal(session, digest, found[-1])
    stale = valid.last_used_at is None or now - valid.last_used_at > LAST_USED_RESOLUTION_S
    if stale:  # the caller records this use (touch_token): keep it, or every later call would record it again
        keep_again(session, key, replace(valid, last_used_at=now))
    return Authenticated(valid.principal, valid.token_id if stale else None)


def _valid_token(found: tuple[TokenRow, UserRow | None, list[MembershipRow]] | None,
                 digest: str) -> _ValidToken | None:
    """The token `found` for this SHA-256 (`accounts.token_by_hash`) when it is valid (known, not revoked, its
    user exists); else None."""
    if found is None:
        return None
    row, user, memberships = found
    if not hmac.compare_digest(row.token_hash, digest) or row.revoked_at is not None or user is None:
        return None
    return _ValidToken(principal_from(user, memberships), row.id, row.last_used_at)


def _refusal(session: Session, digest: str,
             found: tuple[TokenRow, UserRow | None, list[MembershipRow]] | None) -> AuthenticationError:
    """Why the token with this SHA-256 (`found` for it by `accounts.token_by_hash`) is refused."""
    if found is None and accounts.service_token_exists(session, digest):
        return AuthenticationError("this is a service token: it may call only the gateway (/v1/..., "
                                   "/services/<name>/...) for its project's services; the API needs a user's token")
    if found is not None and found[0].revoked_at is None and found[1] is None:
        return AuthenticationError("the API token belongs to a user that no longer exists")
    return AuthenticationError("the API token is not valid (unknown or revoked); create one with "
                               "`gpupool tokens create` or use the token in $GPUPOOL_HOME/token")


def touch_token(session: Session, token_id: int, now: float) -> None:
    """Record that the token was used now."""
    row = session.get(TokenRow, token_id)
    if row is not None:
        row.last_used_at = now


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise AuthenticationError("this call needs an API token: send 'Authorization: Bearer <token>' (the CLI "
                                  "reads GPUPOOL_TOKEN or $GPUPOOL_HOME/token)")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
        raise AuthenticationError("malformed Authorization header; expected 'Bearer <token>'")
    return token


def issue_token(session: Session, user: UserRow, name: str, now: float) -> tuple[TokenRow, str]:
    """Create a token for `user`; returns the row and the token text (shown once, never stored)."""
    token = new_token()
    row = TokenRow(user_id=user.id, name=name, token_hash=hash_token(token), prefix=token[:10], created_at=now)
    session.add(row)
    session.flush()
    return row, token
