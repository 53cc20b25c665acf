"""Request dependencies: the server's Services and the authenticated caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gpupool.server.context import Services
from gpupool.server.services.auth import Principal, authenticate, touch_token

bearer = HTTPBearer(auto_error=False, description="An API token: `gpupool tokens create`, or $GPUPOOL_HOME/token")


def get_services(request: Request) -> Services:
    """The Services of the app serving this request."""
    services: Services = request.app.state.services
    return services


def get_principal(request: Request,
                  _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)] = None) -> Principal:
    """The caller, from the Authorization header; 401 when it is missing or not valid."""
    services = get_services(request)
    now = services.clock()
    with services.db.session(write=False) as session:
        found = authenticate(session, request.headers.get("authorization"), now)
    if found.stale_token_id is not None:
        with services.db.session() as session:
            touch_token(session, found.stale_token_id, now)
    return found.principal


ServicesDep = Annotated[Services, Depends(get_services)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
