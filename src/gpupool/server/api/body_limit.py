"""Request bodies cost the server nothing before the caller is known, and never more than a limit.

`BodyLimit` is a plain ASGI middleware in front of the application:
- a declared Content-Length that is not a number or above the limit gets 413 at once;
- a request to /api/ that carries a body (Content-Length above 0, or chunked) is authenticated from its
  headers *before* one byte of the body is read: 401 without reading it;
- the body is counted as it streams (chunked bodies declare no length): at the limit the request ends with
  413 and the rest is never read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from anyio import to_thread
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException
from starlette.requests import Request

from gpupool.domain.errors import AuthenticationError
from gpupool.server.api.errors import database_error_response, error_response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
Authenticator = Callable[[Scope, str | None], None]  # raises AuthenticationError


class _TooLarge(HTTPException):
    """Raised from `receive` at the limit; an HTTPException, so FastAPI answers 413 with it."""


class BodyLimit:
    """See the module docstring. `authenticate(scope, authorization_header)` runs in a worker thread and
    raises AuthenticationError for a missing or invalid token."""

    def __init__(self, app: App, max_bytes: int, authenticate: Authenticator) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.authenticate = authenticate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._reply(scope, receive, send, 413)
            return
        has_body = (length is not None and int(length) > 0) or "transfer-encoding" in headers
        if has_body and str(scope.get("path", "")).startswith("/api/"):
            try:
                await to_thread.run_sync(self.authenticate, scope, headers.get("authorization"))
            except AuthenticationError as error:
                await self._reply(scope, receive, send, 401, error.message)
                return
            except DBAPIError as error:  # answered here: an error escaping a middleware is logged as a crash
                response = database_error_response(Request(scope), error)
                response.headers["connection"] = "close"
                await response(scope, receive, send)
                return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge(413, f"request bodies are limited to {self.max_bytes} bytes")
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await self._reply(scope, receive, send, 413)

    async def _reply(self, scope: Scope, _receive: Receive, send: Send, status: int, message: str = "") -> None:
        if status == 413:
            response = error_response(413, "too_large", f"request bodies are limited to {self.max_bytes} bytes")
        else:
            response = error_response(status, "authentication_error", message)
        response.headers["connection"] = "close"  # the unread body must not be taken for the next request
        await response(scope, _receive, send)
