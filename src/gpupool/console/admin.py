"""The console's Admin page: projects with their members and roles (create a project, set or remove a
member's role) and their notebooks' idle cap (set or remove), users, and API tokens (create one, shown once;
revoke). The same account services and permission checks as the API: administrators manage everything, a
project's admins its members and idle cap, everyone their own tokens."""

from __future__ import annotations

from typing import Annotated, TypeVar

from fastapi import APIRouter, Path, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError as PydanticValidationError

from gpupool.console.guard import guard, guard_form
from gpupool.console.web import Caller, NavItem, page, register_page, services_of
from gpupool.domain.errors import ValidationError
from gpupool.server.api import schemas
from gpupool.server.services import accounts

router = APIRouter(include_in_schema=False)
register_page(NavItem("/admin", "Admin"))
Name = Annotated[str, Path(max_length=63)]
M = TypeVar("M", bound=schemas.Model)


def _admin_page(request: Request, who: Caller, created: schemas.TokenCreated | None = None) -> Response:
    services = services_of(request)
    with services.db.session(write=False) as session:
        projects = accounts.list_projects(session, who.principal)
        users = accounts.list_users(session, who.principal)
        tokens = accounts.list_tokens(session, who.principal)
    return page(request, "admin.html", who, projects=projects, users=users, tokens=tokens, created=created,
                roles=("admin", "member", "viewer"))


@router.get("/admin")
def admin(request: Request) -> Response:
    """Projects and members, users, and the caller's tokens."""
    return guard(request, lambda who: _admin_page(request, who))


def _model(cls: type[M], **values: object) -> M:
    """Build an API body from form values; a bad field is a ValidationError naming it (as the API's 422)."""
    try:
        return cls.model_validate(values)
    except PydanticValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ()))
        raise ValidationError(f"{field}: {first.get('msg', 'invalid')}", field) from None


@router.post("/admin/projects")
async def create_project(request: Request) -> Response:
    """Create a project and its queue (administrators)."""
    def build(who: Caller, fields: dict[str, str]) -> Response:
        services = services_of(request)
        body = _model(schemas.ProjectCreate, name=fields.get("name", "").strip())
        with services.db.session() as session:
            accounts.create_project(session, who.principal, body, services.clock())
        return RedirectResponse("/admin", status_code=303)
    return await guard_form(request, build)


@router.post("/admin/projects/{name}/members")
async def set_member(request: Request, name: Name) -> Response:
    """Give a user a role in the project, or remove them when `remove` is set (administrators and the
    project's admins)."""
    def build(who: Caller, fields: dict[str, str]) -> Response:
        services = services_of(request)
        user = fields.get("user", "").strip()
        with services.db.session() as session:
            if fields.get("remove"):
                accounts.remove_member(session, who.principal, name, user)
            else:
                body = _model(schemas.MemberSet, user=user, role=fields.get("role", "member"))
                accounts.set_member(session, who.principal, name, body, trusted=services.settings.trusts_users)
        return RedirectResponse("/admin", status_code=303)
    return await guard_form(request, build)


@router.post("/admin/projects/{name}/idle-cap")
async def set_idle_cap(request: Request, name: Name) -> Response:
    """Cap the idle_timeout of the project's notebooks (`4h`, `30m`), or remove the cap (`none`, or the form's
    remove button): administrators and the project's admins, as `PUT /projects/{name}/idle-cap`."""
    def build(who: Caller, fields: dict[str, str]) -> Response:
        services = services_of(request)
        value = "none" if fields.get("remove") else fields.get("max_idle_timeout", "").strip()
        if not value:
            raise ValidationError("give a duration such as 4h, or none to remove the cap", "max_idle_timeout")
        body = _model(schemas.ProjectIdleCap, max_idle_timeout=value)
        with services.db.session() as session:
            accounts.set_idle_cap(session, who.principal, name, body)
        return RedirectResponse(f"/admin#project-{name}", status_code=303)
    return await guard_form(request, build)


@router.post("/admin/tokens")
async def create_token(request: Request) -> Response:
    """A new token for the caller; its text is shown on the page this once."""
    def build(who: Caller, fields: dict[str, str]) -> Response:
        services = services_of(request)
        body = _model(schemas.TokenCreate, name=fields.get("name", "").strip() or "console")
        with services.db.session() as session:
            created = accounts.create_token(session, who.principal, body, services.clock())
        return _admin_page(request, who, created)
    return await guard_form(request, build)


@router.post("/admin/tokens/{token_id}/revoke")
async def revoke_token(request: Request, token_id: Annotated[int, Path(ge=1, le=schemas.MAX_ID)]) -> Response:
    """Revoke one of the caller's tokens (administrators: anyone's)."""
    def build(who: Caller, _fields: dict[str, str]) -> Response:
        services = services_of(request)
        with services.db.session() as session:
            accounts.revoke_token(session, who.principal, token_id, services.clock())
        return RedirectResponse("/admin", status_code=303)
    return await guard_form(request, build)
