"""The one mapping from errors to HTTP responses: domain errors to 4xx with a JSON body, a database that
stayed busy past its lock wait to a 503 with Retry-After (the request can be retried), anything else to a
500 that says only that something failed (the traceback goes to the server log, never to the client)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gpupool.domain.errors import GpupoolError, StoreBusyError, ValidationError, error_kind
from gpupool.executors.base import ExecutorError
from gpupool.server.api.schemas import ErrorBody, ErrorDetail
from gpupool.store.db import busy_error

log = logging.getLogger("gpupool.api")

# HTTP status of each error kind of gpupool.domain.errors.ERROR_KINDS
HTTP_STATUS: dict[str, int] = {"unsatisfiable": 422, "validation_error": 422, "authentication_error": 401,
                               "permission_denied": 403, "not_found": 404, "conflict": 409, "store_busy": 503}
# Retry-After of a store_busy answer: the lock wait that ran out already lasted seconds, so the holder is a
# long write; a second lets it finish without asking callers to wait long for a retry
STORE_BUSY_RETRY_AFTER_S = 1


def error_response(status: int, kind: str, message: str, field: str | None = None) -> JSONResponse:
    """A JSON error response with the ErrorBody shape."""
    body = ErrorBody(error=ErrorDetail(type=kind, message=message, field=field))
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def domain_error_response(exc: GpupoolError) -> JSONResponse:
    """The response for a domain error."""
    kind = error_kind(exc)
    if kind is None:
        return error_response(400, "error", exc.message)
    field = exc.field if isinstance(exc, ValidationError) else None
    message = exc.detail if isinstance(exc, ValidationError) and exc.field else exc.message
    response = error_response(HTTP_STATUS[kind], kind, message, field)
    if isinstance(exc, StoreBusyError):
        response.headers["Retry-After"] = str(STORE_BUSY_RETRY_AFTER_S)
    return response


def database_error_response(request: Request, exc: Exception) -> JSONResponse:
    """A 503 to retry when the database was only busy (see store.db.busy_error), else the internal 500."""
    busy = busy_error(exc)
    if busy is not None:
        log.warning("database busy on %s %s: %s", request.method, request.url.path, exc)
        return domain_error_response(busy)
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "the server failed to handle this request; the details are "
                          "in the server log")


def request_validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """What is wrong with a request FastAPI refused (its first problem, and how many more) and the field named."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "header")]
    message = str(first.get("msg", "invalid request"))
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem(s))"
    return message, ".".join(location) or None


def request_validation_response(exc: RequestValidationError) -> JSONResponse:
    """The JSON 422 of a request FastAPI refused (a bad query, path or body)."""
    message, field = request_validation_message(exc)
    return error_response(422, "validation_error", message, field)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on `app`."""

    @app.exception_handler(GpupoolError)
    async def _domain(_request: Request, exc: GpupoolError) -> JSONResponse:
        return domain_error_response(exc)

    @app.exception_handler(ExecutorError)
    async def _executor(request: Request, exc: ExecutorError) -> JSONResponse:
        log.warning("executor error on %s %s: %s", request.method, request.url.path, exc)
        return error_response(503, "executor_error", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return request_validation_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, kind, str(exc.detail))

    @app.exception_handler(DBAPIError)
    async def _database(request: Request, exc: DBAPIError) -> JSONResponse:
        return database_error_response(request, exc)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:  # also what escapes a middleware
        return database_error_response(request, exc)
