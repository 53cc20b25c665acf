"""What every console page shares: the Jinja2 environment (autoescaping on), the navigation registry, the
signed-in caller from the session cookie, the CSRF token and check, and rendering with errors as pages."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from gpupool.domain.errors import (
    AuthenticationError,
    GpupoolError,
    PermissionDeniedError,
    ValidationError,
    error_kind,
)
from gpupool.domain.resources import format_cpu, format_gpu, format_memory
from gpupool.server.api.errors import HTTP_STATUS
from gpupool.server.context import Services
from gpupool.server.services.auth import Principal, authenticate, touch_token

COOKIE = "gpupool_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
MAX_FORM_BYTES = 256 * 1024  # a form holds at most one spec; 256 KiB is far above any example's few hundred bytes
COOKIE_MAX_AGE_S = 7 * 86400  # a week: sign in about once a week; the token itself stays valid until revoked
HERE = Path(__file__).parent


@dataclass(frozen=True, slots=True)
class NavItem:
    """One entry of the navigation bar: its path, label, and whether only administrators see it."""

    path: str
    label: str
    admin_only: bool = False
    also: tuple[str, ...] = ()  # path prefixes of its other pages (e.g. a detail page under another path)


# The pages in the navigation, in order; pages of later kinds (notebooks, services, pipelines, sweeps) add an
# entry here with `register_page`.
NAV: list[NavItem] = [NavItem("/", "Overview"), NavItem("/workloads", "Workloads"), NavItem("/new", "New workload"),
                      NavItem("/nodes", "Nodes and GPUs"), NavItem("/queues", "Queues"), NavItem("/usage", "Usage")]


def register_page(item: NavItem, after: str | None = None) -> None:
    """Add a page to the navigation, at the end or just after the entry of path `after` (idempotent for the
    same path)."""
    if any(existing.path == item.path for existing in NAV):
        return
    index = next((i + 1 for i, existing in enumerate(NAV) if existing.path == after), len(NAV))
    NAV.insert(index, item)


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "-"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True),
                        trim_blocks=True, lstrip_blocks=True)
templates.filters.update(when=_when, duration=_duration, gpu=format_gpu, cpu=format_cpu, memory=format_memory)


# ------------------------------------------------------------------------------------- the caller
@dataclass(frozen=True, slots=True)
class Caller:
    """The signed-in user of a console request and the CSRF token of their session."""

    principal: Principal
    csrf: str


def csrf_token_for(token: str) -> str:
    """The CSRF token of a session: an HMAC of a fixed label keyed by the API token (only a page served to the
    cookie's holder can show it; it needs no server state and stays valid while the token does)."""
    return hmac.new(token.encode(), b"gpupool-console-csrf", hashlib.sha256).hexdigest()


def services_of(request: Request) -> Services:
    """The Services of the app serving this request."""
    services: Services = request.app.state.services
    return services


def caller(request: Request) -> Caller:
    """The signed-in caller, from the session cookie; AuthenticationError when there is none or it is invalid."""
    token = request.cookies.get(COOKIE)
    if not token:
        raise AuthenticationError("sign in with an API token")
    return Caller(principal_for_token(services_of(request), token), csrf_token_for(token))


def principal_for_token(services: Services, token: str) -> Principal:
    """The Principal of an API token, through the API's own authentication (its last use recorded)."""
    now = services.clock()
    with services.db.session(write=False) as session:
        found = authenticate(session, f"Bearer {token}", now)
    if found.stale_token_id is not None:
        with services.db.session() as session:
            touch_token(session, found.stale_token_id, now)
    return found.principal


async def form_of(request: Request, who: Caller) -> dict[str, str]:
    """The fields of a urlencoded form (the last value of each); PermissionDeniedError unless its CSRF token
    (field or X-CSRF-Token header) is the session's."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise ValidationError(f"forms are limited to {MAX_FORM_BYTES} bytes", "form")
    fields = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
    sent = fields.pop(CSRF_FIELD, None) or request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(sent.encode(), who.csrf.encode()):
        raise PermissionDeniedError("the form's CSRF token is missing or wrong; reload the page and try again")
    return fields


# ---------------------------------------------------------------------------------------- rendering
def page(request: Request, template: str, who: Caller | None, status: int = 200, **context: Any) -> HTMLResponse:
    """Render a page with the navigation, the caller and their CSRF token."""
    principal = who.principal if who else None
    nav = [n for n in NAV if not n.admin_only or (principal is not None and principal.is_admin)]
    path = request.url.path
    current = next((n.path for n in nav if path == n.path or (n.path != "/" and path.startswith(n.path))
                    or any(path.startswith(prefix) for prefix in n.also)), None)
    html = templates.get_template(template).render(
        request_path=path, current=current, nav=nav, me=principal, csrf=who.csrf if who else "",
        csrf_field=CSRF_FIELD, **context)
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


SECURITY_HEADERS: Mapping[str, str] = {
    # only this server's own scripts and styles; inline handlers and injected scripts never run
    "content-security-policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "x-content-type-options": "nosniff", "referrer-policy": "same-origin", "cache-control": "no-store"}


def error_page(request: Request, error: GpupoolError, who: Caller | None, back: str | None = None) -> Response:
    """A domain error as a page: sign-in for a missing or invalid session, else the message and its status,
    with a link `back` (a path of this server) when given."""
    if isinstance(error, AuthenticationError):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response = RedirectResponse(f"/signin?next={quote(target, safe='')}", status_code=303)
        if request.cookies.get(COOKIE):
            response.delete_cookie(COOKIE, path="/")
        return response
    status = HTTP_STATUS.get(error_kind(error) or "", 400)
    return page(request, "error.html", who, status=status, message=error.message, back=back)


def is_console_request(request: Request) -> bool:
    """True when the route that matched is one of the console's pages (the console's API call under /api is not:
    the API answers JSON)."""
    endpoint = getattr(request.scope.get("route"), "endpoint", None)
    module = getattr(endpoint, "__module__", "") or ""
    return module.startswith("gpupool.console.") and not request.url.path.startswith("/api/")


def bad_request_page(request: Request, message: str, field: str | None) -> Response:
    """The page for a console URL FastAPI refused (a bad query or path parameter): what is wrong, the field, and
    a link back to the same page without its query; a missing session still leads to the sign-in page."""
    who = None
    try:
        who = caller(request)
    except GpupoolError as error:
        if not request.url.path.startswith("/signin"):  # the sign-in pages themselves need no session
            return error_page(request, error, None)
    problem = ValidationError(f"{message} (correct or remove it in the address)", field)
    return error_page(request, problem, who, back=request.url.path)
