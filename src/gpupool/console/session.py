"""Console sign-in and sign-out: an API token pasted into the form, or a one-time link from `gpupool
console`, becomes an HttpOnly, SameSite=Strict cookie; sign-out removes it."""

from __future__ import annotations

import secrets
import threading
import time
from typing import Annotated
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from gpupool.console.guard import guard_form
from gpupool.console.web import COOKIE, COOKIE_MAX_AGE_S, MAX_FORM_BYTES, Caller, page, principal_for_token
from gpupool.domain.errors import AuthenticationError, GpupoolError

router = APIRouter(include_in_schema=False)
LINK_TTL_S = 300.0  # a one-time link is meant to be opened right after `gpupool console` prints it
MAX_LINKS = 1000  # pending links kept at most (oldest dropped): far more than users signing in at once


class OneTimeLinks:
    """Codes that each stand for an API token once, for LINK_TTL_S (in memory: a restart forgets them, and
    `gpupool console` prints a new one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._codes: dict[str, tuple[str, float]] = {}

    def create(self, token: str) -> str:
        """A new code for `token`."""
        code = secrets.token_urlsafe(24)
        with self._lock:
            now = time.monotonic()
            self._codes = {c: v for c, v in self._codes.items() if v[1] > now}
            while len(self._codes) >= MAX_LINKS:
                self._codes.pop(next(iter(self._codes)))
            self._codes[code] = (token, now + LINK_TTL_S)
        return code

    def redeem(self, code: str) -> str | None:
        """The token of a valid code, which is then used up; None for an unknown, used or expired code."""
        with self._lock:
            found = self._codes.pop(code, None)
        if found is None or found[1] < time.monotonic():
            return None
        return found[0]


LINKS = OneTimeLinks()


def _safe_next(target: str | None) -> str:
    """Only a path of this server (never another site) is a place to go after signing in."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _same_origin(request: Request) -> bool:
    """True unless the browser says the form came from another site (Origin, else Referer)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return origin is None
    parts = urlsplit(origin)
    return f"{parts.scheme}://{parts.netloc}" == f"{request.url.scheme}://{request.url.netloc}"


def _signed_in(request: Request, token: str, target: str) -> Response:
    response = RedirectResponse(_safe_next(target), status_code=303)
    response.set_cookie(COOKIE, token, max_age=COOKIE_MAX_AGE_S, path="/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


@router.get("/signin")
def signin_form(request: Request, next: Annotated[str, Query(max_length=2000)] = "/") -> Response:
    """The sign-in page: paste an API token."""
    return page(request, "signin.html", None, next=_safe_next(next))


@router.post("/signin")
async def signin(request: Request) -> Response:
    """Check the pasted token through the API's authentication and keep it in the session cookie."""
    body = await request.body()
    fields = {k: v[-1] for k, v in parse_qs(body[:MAX_FORM_BYTES].decode("utf-8", "replace")).items()}
    target = _safe_next(fields.get("next"))
    if not _same_origin(request):
        return page(request, "signin.html", None, status=403, next=target,
                    error="this sign-in form was sent from another site; open the console's own page")
    token = fields.get("token", "").strip()
    try:
        await run_in_threadpool(principal_for_token, request.app.state.services, token)
    except GpupoolError as error:
        return page(request, "signin.html", None, status=401, next=target, error=error.message)
    return _signed_in(request, token, target)


@router.get("/signin/link")
def signin_link(request: Request, code: Annotated[str, Query(max_length=64)] = "") -> Response:
    """Redeem a one-time link from `gpupool console`: sign in and go to the overview."""
    token = LINKS.redeem(code)
    try:
        if token is None:
            raise AuthenticationError("this sign-in link is unknown, used or expired; run `gpupool console` again "
                                      "or paste a token")
        principal_for_token(request.app.state.services, token)
    except GpupoolError as error:
        return page(request, "signin.html", None, status=401, next="/", error=error.message)
    return _signed_in(request, token, "/")


@router.post("/signout")
async def signout(request: Request) -> Response:
    """Forget the session cookie (the token itself stays valid; revoke it with `gpupool tokens revoke`)."""
    def build(_who: Caller, _fields: dict[str, str]) -> Response:
        response = RedirectResponse("/signin", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response
    return await guard_form(request, build)
