"""A busy store while the request-size middleware authenticates a body's sender: the caller gets the 503
`store_busy` answer with Retry-After, and nothing escapes the middleware (an escaping error is logged by the
ASGI stack as a crash, with a traceback, although the caller was answered)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from typing import Any

from sqlalchemy.exc import OperationalError

from gpupool.server.api.body_limit import BodyLimit


async def _never_called(_scope: Any, _receive: Any, _send: Any) -> None:
    raise AssertionError("the application must not run when the sender could not be authenticated")


def _busy(_scope: Any, _authorization: str | None) -> None:
    raise OperationalError("SELECT 1", {}, sqlite3.OperationalError("database is locked"))


def test_a_busy_store_during_authentication_is_a_503_answered_by_the_middleware() -> None:
    sent: list[dict[str, Any]] = []
    scope = {"type": "http", "method": "POST", "path": "/api/v1/workloads", "query_string": b"",
             "headers": [(b"content-length", b"2"), (b"authorization", b"Bearer x")]}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(BodyLimit(_never_called, max_bytes=1024, authenticate=_busy)(scope, receive, send))
    start, body = sent[0], sent[1]
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    assert start["status"] == 503 and headers["retry-after"] == "1" and headers["connection"] == "close"
    assert json.loads(body["body"])["error"]["type"] == "store_busy"
