"""Running a console handler: the caller resolved from the session cookie, the CSRF token checked on forms,
and domain errors turned into pages (a missing session into the sign-in page, a busy database into a 503 page
that says to retry) — never a traceback."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request
from fastapi.responses import Response
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool

from gpupool.console.web import Caller, caller, error_page, form_of
from gpupool.domain.errors import GpupoolError
from gpupool.store.db import busy_error


def guard(request: Request, build: Callable[[Caller], Response]) -> Response:
    """`build(caller)` for a signed-in caller (in the calling thread); its domain errors as pages."""
    who = None
    try:
        who = caller(request)
        return build(who)
    except GpupoolError as error:
        return error_page(request, error, who)
    except DBAPIError as error:
        return _busy_page(request, error, who)


async def guard_form(request: Request, build: Callable[[Caller, dict[str, str]], Response]) -> Response:
    """`build(caller, form fields)` in a worker thread, after the form's CSRF token was checked."""
    who = None
    try:
        who = await run_in_threadpool(caller, request)
        fields = await form_of(request, who)
        return await run_in_threadpool(build, who, fields)
    except GpupoolError as error:
        return error_page(request, error, who)
    except DBAPIError as error:
        return _busy_page(request, error, who)


def _busy_page(request: Request, error: DBAPIError, who: Caller | None) -> Response:
    """The 503 page for a database that was only busy; any other database error goes on to the 500 handler."""
    busy = busy_error(error)
    if busy is None:
        raise error
    return error_page(request, busy, who)
