"""Which requests `BodyLimit` authenticates before their body, and which it leaves to their route.

A route named in `self_authenticating` authenticates its caller itself (the single submit, in its worker
thread): the middleware leaves it a body it declares at most SELF_AUTH_MAX_BYTES long; anything larger,
chunked, or on another route is still authenticated before one byte of it is read.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gpupool.domain.errors import AuthenticationError
from gpupool.server.api.body_limit import SELF_AUTH_MAX_BYTES, BodyLimit

SUBMIT = ("POST", "/api/v1/workloads")


def _run(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[list[str], int]:
    """Send one request through a BodyLimit whose authenticator records its calls and refuses everyone;
    returns (who ran: "authenticate" and/or "app", the answer's status)."""
    ran: list[str] = []
    sent: list[dict[str, Any]] = []

    def refuse(_scope: Any, _authorization: str | None) -> None:
        ran.append("authenticate")
        raise AuthenticationError("no token")

    async def app(_scope: Any, receive: Any, send: Any) -> None:
        ran.append("app")
        await receive()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "query_string": b"", "headers": headers}
    limit = BodyLimit(app, max_bytes=2 * 1024 * 1024, authenticate=refuse, self_authenticating=frozenset({SUBMIT}))
    asyncio.run(limit(scope, receive, send))
    return ran, sent[0]["status"]


@pytest.mark.parametrize("length", [2, SELF_AUTH_MAX_BYTES])
def test_a_small_submit_is_left_to_its_route_to_authenticate(length: int) -> None:
    ran, status = _run(*SUBMIT, [(b"content-length", str(length).encode())])
    assert ran == ["app"] and status == 204


@pytest.mark.parametrize(("method", "path", "headers"), [
    ("POST", "/api/v1/workloads", [(b"content-length", str(SELF_AUTH_MAX_BYTES + 1).encode())]),
    ("POST", "/api/v1/workloads", [(b"transfer-encoding", b"chunked")]),
    ("POST", "/api/v1/workloads/batch", [(b"content-length", b"2")]),
    ("POST", "/api/v1/workloads/", [(b"content-length", b"2")]),
    ("PUT", "/api/v1/workloads", [(b"content-length", b"2")]),
])
def test_anything_else_with_a_body_is_authenticated_before_it_is_read(method: str, path: str,
                                                                      headers: list[tuple[bytes, bytes]]) -> None:
    ran, status = _run(method, path, headers)
    assert ran == ["authenticate"] and status == 401
