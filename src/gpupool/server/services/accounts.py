"""Users, projects, memberships and API tokens."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpupool.domain.accounts import ProjectRole, parse_role
from gpupool.domain.errors import ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from gpupool.domain.notebooks import IDLE_OFF, parse_idle_timeout
from gpupool.domain.specs import validate_name
from gpupool.server.api import schemas
from gpupool.server.services.auth import Principal, issue_token
from gpupool.store.orm import MembershipRow, ProjectRow, QueueRow, TokenRow, UserRow
from gpupool.store.repos import accounts


# --------------------------------------------------------------------------------------- users
def user_view(session: Session, user: UserRow) -> schemas.User:
    """A user as the API shows it."""
    names = accounts.project_names(session)
    memberships = [schemas.Membership(project=names[m.project_id], role=m.role)
                   for m in accounts.memberships_of_user(session, user.id)]
    memberships.sort(key=lambda m: m.project)
    return schemas.User(id=user.id, name=user.name, is_admin=user.is_admin, created_at=user.created_at,
                        projects=memberships)


def whoami(session: Session, principal: Principal) -> schemas.User:
    """The calling user."""
    user = accounts.user_by_id(session, principal.user_id)
    if user is None:
        raise NotFoundError("your user no longer exists")
    return user_view(session, user)


def list_users(session: Session, principal: Principal) -> list[schemas.User]:
    """Every user (administrators), or just the caller."""
    if not principal.is_admin:
        return [whoami(session, principal)]
    return [user_view(session, u) for u in accounts.list_users(session)]


SINGLE_USER_REFUSAL = (
    "this is a single-user pool (the server does not run as root): every workload runs as the server's OS user "
    "and can read the admin token and every other workload's files, so users of several projects would see "
    "each other's data. Run the server as root for per-user isolation, or start it with --trust-users "
    "(GPUPOOL_TRUST_USERS=true) if all users may see everything")


def check_trusted_membership(session: Session, user: UserRow, project_id: int, trusted: bool) -> None:
    """In an untrusted single-user pool, ConflictError when making `user` a member of `project_id` would give
    non-admin users in more than one project (administrators see everything anyway)."""
    if trusted or user.is_admin:
        return
    projects = set(session.scalars(select(MembershipRow.project_id).join(UserRow, UserRow.id == MembershipRow.user_id)
                                   .where(UserRow.is_admin.is_(False))).all())
    if projects - {project_id}:
        raise ConflictError(SINGLE_USER_REFUSAL)


def create_user(session: Session, principal: Principal, body: schemas.UserCreate, now: float, *,
                trusted: bool = True, warning: str | None = None) -> schemas.UserCreated:
    """Create a user (administrators only), optionally as a member of a project, with a first token. With
    `trusted` False (an untrusted single-user pool), see `check_trusted_membership`; `warning` is passed on
    to the caller (what the pool's user mode means for the new user)."""
    principal.require_admin("create users")
    name = validate_name(body.name, "name")
    if accounts.user_by_name(session, name) is not None:
        raise ConflictError(f"user {name} already exists")
    role = parse_role(body.role)
    project = _project(session, body.project) if body.project else None
    user = create_user_row(session, name, body.admin, now)
    if project is not None:
        check_trusted_membership(session, user, project.id, trusted)
        session.add(MembershipRow(user_id=user.id, project_id=project.id, role=role.value))
        session.flush()
    _, token = issue_token(session, user, "initial", now)
    return schemas.UserCreated(user=user_view(session, user), token=token, warning=warning)


def create_user_row(session: Session, name: str, is_admin: bool, now: float) -> UserRow:
    """Insert a user row (no checks)."""
    user = UserRow(name=name, is_admin=is_admin, created_at=now)
    session.add(user)
    session.flush()
    return user


# ------------------------------------------------------------------------------------ projects
def _project(session: Session, name: str) -> ProjectRow:
    project = accounts.project_by_name(session, name)
    if project is None:
        known = ", ".join(p.name for p in accounts.list_projects(session)) or "none yet"
        raise NotFoundError(f"project {name!r} does not exist (projects: {known})")
    return project


def project_view(session: Session, principal: Principal, project: ProjectRow) -> schemas.Project:
    """A project with its members (members are listed to its members and to administrators)."""
    role = principal.roles.get(project.id)
    members = [schemas.Member(user=u.name, role=m.role) for m, u in accounts.members_of_project(session, project.id)]
    return schemas.Project(name=project.name, created_at=project.created_at, role=role.value if role else None,
                           members=members, max_idle_timeout_s=project.max_idle_timeout_s)


def list_projects(session: Session, principal: Principal) -> list[schemas.Project]:
    """The caller's projects (every project for administrators)."""
    ids = None if principal.is_admin else set(principal.roles)
    return [project_view(session, principal, p) for p in accounts.list_projects(session, ids)]


def create_project(session: Session, principal: Principal, body: schemas.ProjectCreate,
                   now: float) -> schemas.Project:
    """Create a project and its queue (administrators only); the creator becomes its admin."""
    principal.require_admin("create projects")
    name = validate_name(body.name, "name")
    if accounts.project_by_name(session, name) is not None:
        raise ConflictError(f"project {name} already exists")
    project = create_project_row(session, name, now)
    session.add(MembershipRow(user_id=principal.user_id, project_id=project.id, role=ProjectRole.ADMIN.value))
    session.flush()
    return project_view(session, principal, project)


def create_project_row(session: Session, name: str, now: float) -> ProjectRow:
    """Insert a project and its queue (no guarantee, no limit, weight 1, lending)."""
    project = ProjectRow(name=name, created_at=now)
    session.add(project)
    session.flush()
    session.add(QueueRow(name=name, project_id=project.id, guaranteed_cpu_milli=0, guaranteed_memory_mib=0,
                         guaranteed_gpu_milli=0, weight=1.0, lend=True, strict_fifo=False, updated_at=now))
    session.flush()
    return project


def set_member(session: Session, principal: Principal, project_name: str, body: schemas.MemberSet, *,
               trusted: bool = True) -> schemas.Project:
    """Give a user a role in a project (administrators and the project's admins); `trusted` as in
    `create_user`."""
    project = _project(session, project_name)
    if not principal.can_manage(project.id):
        raise PermissionDeniedError(f"only administrators and admins of project {project.name} may change its "
                                    "members")
    user = accounts.user_by_name(session, body.user)
    if user is None:
        raise NotFoundError(f"user {body.user!r} does not exist")
    role = parse_role(body.role)
    existing = accounts.membership(session, user.id, project.id)
    if existing is None:
        check_trusted_membership(session, user, project.id, trusted)
        session.add(MembershipRow(user_id=user.id, project_id=project.id, role=role.value))
    else:
        existing.role = role.value
    session.flush()
    return project_view(session, principal, project)


def remove_member(session: Session, principal: Principal, project_name: str, user_name: str) -> schemas.Project:
    """Remove a user from a project (administrators and the project's admins)."""
    project = _project(session, project_name)
    if not principal.can_manage(project.id):
        raise PermissionDeniedError(f"only administrators and admins of project {project.name} may change its "
                                    "members")
    user = accounts.user_by_name(session, user_name)
    existing = accounts.membership(session, user.id, project.id) if user else None
    if existing is None:
        raise NotFoundError(f"{user_name!r} is not a member of project {project.name}")
    session.delete(existing)
    session.flush()
    return project_view(session, principal, project)


def set_idle_cap(session: Session, principal: Principal, project_name: str,
                 body: schemas.ProjectIdleCap) -> schemas.Project:
    """Cap the idle_timeout of the project's notebooks, or remove the cap with `none` (administrators and the
    project's admins). The culler applies it from its next pass, to running notebooks too."""
    project = _project(session, project_name)
    if not principal.can_manage(project.id):
        raise PermissionDeniedError(f"only administrators and admins of project {project.name} may cap its "
                                    "notebooks' idle_timeout")
    value = body.max_idle_timeout
    if isinstance(value, str) and value.strip().lower() == "none":
        project.max_idle_timeout_s = None
    else:
        cap = parse_idle_timeout(value, "max_idle_timeout")
        if cap is None or cap == IDLE_OFF:
            raise ValidationError(f"{value!r} is not a cap; give a duration such as 4h, or none to remove the cap",
                                  "max_idle_timeout")
        project.max_idle_timeout_s = cap
    session.flush()
    return project_view(session, principal, project)


# -------------------------------------------------------------------------------------- tokens
def token_view(row: TokenRow, user_name: str) -> schemas.Token:
    """A token's metadata."""
    return schemas.Token(id=row.id, name=row.name, user=user_name, prefix=row.prefix, created_at=row.created_at,
                         last_used_at=row.last_used_at, revoked=row.revoked_at is not None)


def list_tokens(session: Session, principal: Principal, user_name: str | None = None) -> list[schemas.Token]:
    """The caller's tokens, or (administrators) another user's."""
    user = _token_owner(session, principal, user_name)
    return [token_view(t, user.name) for t in accounts.tokens_of(session, user.id)]


def create_token(session: Session, principal: Principal, body: schemas.TokenCreate,
                 now: float) -> schemas.TokenCreated:
    """A new token for the caller, or (administrators) for another user; the text is returned once."""
    user = _token_owner(session, principal, body.user)
    row, token = issue_token(session, user, validate_name(body.name), now)
    return schemas.TokenCreated(token=token, info=token_view(row, user.name))


def revoke_token(session: Session, principal: Principal, token_id: int, now: float) -> schemas.Token:
    """Revoke one of the caller's tokens (administrators: anyone's). Idempotent."""
    row = session.get(TokenRow, token_id)
    if row is None or (row.user_id != principal.user_id and not principal.is_admin):
        raise NotFoundError(f"token {token_id} not found")
    if row.revoked_at is None:
        row.revoked_at = now
    owner = accounts.user_by_id(session, row.user_id)
    return token_view(row, owner.name if owner else "?")


def _token_owner(session: Session, principal: Principal, user_name: str | None) -> UserRow:
    if user_name is None or user_name == principal.name:
        user = accounts.user_by_id(session, principal.user_id)
    else:
        principal.require_admin("manage other users' tokens")
        user = accounts.user_by_name(session, user_name)
    if user is None:
        raise NotFoundError(f"user {user_name!r} does not exist")
    return user
