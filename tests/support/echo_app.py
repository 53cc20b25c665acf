"""A tiny HTTP + WebSocket server run as a workload in proxy tests: it listens on $GPUPOOL_PORT.

HTTP: every request is answered with JSON describing it (method, path, query, headers, body), except
`/redirect` (a 302 to /elsewhere) and `/hop` (a response carrying hop-by-hop headers). WebSocket: every
message comes back prefixed with "echo:"; the subprotocol the client asks for first is accepted.
"""

from __future__ import annotations

import json
import os
from typing import Any

import uvicorn

Scope = dict[str, Any]


async def app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
    elif scope["type"] == "websocket":
        await _websocket(scope, receive, send)
    elif scope["type"] == "http":
        await _http(scope, receive, send)


async def _http(scope: Scope, receive: Any, send: Any) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
    status = 200
    if scope["path"] == "/redirect":
        status, headers = 302, [(b"location", b"/elsewhere")]
    elif scope["path"] == "/hop":
        headers += [(b"keep-alive", b"timeout=5"), (b"x-hop", b"1"), (b"connection", b"x-hop"),
                    (b"x-kept", b"yes")]
    payload = json.dumps({"method": scope["method"], "path": scope["path"],
                          "query": scope["query_string"].decode(), "body": body.decode(errors="replace"),
                          "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]]}).encode()
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _websocket(scope: Scope, receive: Any, send: Any) -> None:
    await receive()  # websocket.connect
    protocols = scope.get("subprotocols") or []
    await send({"type": "websocket.accept", **({"subprotocol": protocols[0]} if protocols else {})})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": "echo:" + message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": b"echo:" + message["bytes"]})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["GPUPOOL_PORT"]), log_level="warning")
