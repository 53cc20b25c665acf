"""Wiring the console into the server: its page routers, its static files under /console/static, and the
API call behind `gpupool console` (a one-time sign-in link for the caller's token)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from gpupool.api.usage_schemas import ConsoleLink
from gpupool.console import admin, apps, pool, runs, service_pages, session, workloads
from gpupool.console.web import HERE, bad_request_page, is_console_request
from gpupool.server.api.deps import PrincipalDep
from gpupool.server.api.errors import request_validation_message, request_validation_response
from gpupool.server.api.routes.workloads import ERRORS

api = APIRouter(tags=["console"])


@api.post("/console/links", response_model=ConsoleLink, responses=ERRORS)
def create_link(request: Request, _principal: PrincipalDep) -> ConsoleLink:
    """A one-time link that signs the browser that opens it in as the caller (with the caller's token)."""
    token = request.headers["authorization"].partition(" ")[2].strip()
    return ConsoleLink(path=f"/signin/link?code={session.LINKS.create(token)}", expires_in_s=session.LINK_TTL_S)


def install(app: FastAPI) -> None:
    """Add the console's pages at `/`, its static files and its API call to `app`."""
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")
    for module in (session, workloads, pool, admin, apps, service_pages, runs):
        app.include_router(module.router)
    app.include_router(api, prefix="/api/v1")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        """A console page's bad parameter answers an HTML page; the API keeps its JSON 422."""
        if not is_console_request(request):
            return request_validation_response(exc)
        message, field = request_validation_message(exc)
        return await run_in_threadpool(bad_request_page, request, message, field)
