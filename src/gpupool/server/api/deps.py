"""Request dependencies: the server's Services and the authenticated caller.

Both are `async` dependencies: FastAPI runs a plain `def` dependency in a worker thread, a hand-off (and a
wait for a free thread) per dependency per request. `get_services` only reads an attribute; the caller is
taken from what `BodyLimit` already authenticated for this request (a request with a body is authenticated
before its body is read; see `remember_caller`), and only otherwise looked up in a worker thread.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from gpupool.server.context import Services
from gpupool.server.services.auth import Authenticated, Principal, authenticate, touch_token

bearer = HTTPBearer(auto_error=False, description="An API token: `gpupool tokens create`, or $GPUPOOL_HOME/token")
_CALLER = "gpupool.caller"  # the request scope's key for (Authorization header, Authenticated)


async def get_services(request: Request) -> Services:
    """The Services of the app serving this request."""
    services: Services = request.app.state.services
    return services


def remember_caller(scope: MutableMapping[str, Any], authorization: str | None, found: Authenticated) -> None:
    """Keep the caller authenticated for this request (by the body limit, before the body was read), so that
    the request is not authenticated a second time; kept only for this request's scope."""
    scope[_CALLER] = (authorization, found)


def _remembered(request: Request) -> Authenticated | None:
    """The caller `remember_caller` kept for this request, when it came from the same Authorization header."""
    kept = request.scope.get(_CALLER)
    if kept is None or kept[0] != request.headers.get("authorization"):
        return None
    found: Authenticated = kept[1]
    return found


def get_principal(request: Request) -> Principal:
    """The caller, from the Authorization header (blocking: reads the store unless this request's caller is
    already known); 401 when it is missing or not valid. Records a stale token's last use."""
    services: Services = request.app.state.services
    now = services.clock()
    found = _remembered(request)
    if found is None:
        with services.db.lookup() as session:
            found = authenticate(session, request.headers.get("authorization"), now)
    if found.stale_token_id is not None:
        with services.db.session() as session:
            touch_token(session, found.stale_token_id, now)
    return found.principal


async def caller(request: Request,
                 _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)] = None) -> Principal:
    """The request's caller (the dependency behind PrincipalDep): without a worker thread when the body limit
    already authenticated it and its token's last use needs no update, else `get_principal` in one."""
    found = _remembered(request)
    if found is not None and found.stale_token_id is None:
        return found.principal
    return await run_in_threadpool(get_principal, request)


ServicesDep = Annotated[Services, Depends(get_services)]
PrincipalDep = Annotated[Principal, Depends(caller)]
