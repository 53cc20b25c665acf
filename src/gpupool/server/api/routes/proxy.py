"""Proxy routes: HTTP and WebSocket to a port a replica listens on (`gpupool.server.proxy` does the work).

`/workloads/<id>/ports/<port>/<path>` reaches replica 0; `/workloads/<id>/replicas/<n>/ports/<port>/<path>`
any replica. The port is the one named in the spec's `ports:`.
"""

from __future__ import annotations

from typing import Annotated

import httpx
from fastapi import APIRouter, Path, Request, WebSocket
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect

from gpupool.domain.errors import GpupoolError
from gpupool.server import proxy
from gpupool.server.api.errors import domain_error_response, error_response
from gpupool.server.context import Services

router = APIRouter(include_in_schema=False)
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
WorkloadId = Annotated[int, Path(ge=1, le=2**53)]
Port = Annotated[int, Path(ge=1, le=65535)]
ReplicaNo = Annotated[int, Path(ge=0, le=100_000)]
# WebSocket close codes: 1008 policy violation (auth, origin), 1011 the replica could not be reached, 1013 not
# ready yet ("try again later"), as RFC 6455 section 7.4.1 and the IANA registry define them.
WS_POLICY, WS_UNREACHABLE, WS_TRY_LATER = 1008, 1011, 1013


def _prefix(workload_id: int, replica: int, port: int, short: bool) -> str:
    return f"/workloads/{workload_id}/ports/{port}" if short else \
        f"/workloads/{workload_id}/replicas/{replica}/ports/{port}"


async def _http(request: Request, workload_id: int, replica: int, port: int, path: str, short: bool) -> Response:
    services: Services = request.app.state.services
    prefix = _prefix(workload_id, replica, port, short)
    try:
        proxy.check_same_origin(request.method, request.headers, request.url.scheme)
        target = await run_in_threadpool(proxy.resolve_target, services.db, services.clock(),
                                         proxy.request_token(request.headers), workload_id, replica, port, prefix)
    except proxy.NotReadyError as exc:
        return error_response(503, "not_ready", exc.message)
    except GpupoolError as exc:
        return domain_error_response(exc)
    client_host = request.client.host if request.client else ""
    headers = proxy.upstream_request_headers(request.headers.items(), client_host, request.url.scheme, target)
    try:
        upstream = await proxy.forward_http(services.proxy_client(), target, request.method, path,
                                            request.url.query.encode(), headers, request.stream())
    except httpx.TransportError as exc:
        return error_response(502, "bad_gateway", f"replica {replica} of workload {workload_id} could not be "
                                                  f"reached on port {port} ({type(exc).__name__})")
    return StreamingResponse(upstream.body(), status_code=upstream.status, headers=dict(_merge(upstream.headers)))


def _merge(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    merged: dict[str, str] = {}
    for key, value in pairs:
        merged[key] = f"{merged[key]}, {value}" if key in merged and key.lower() != "set-cookie" else value
    return list(merged.items())


@router.api_route("/workloads/{workload_id}/ports/{port}", methods=METHODS)
async def short_root(workload_id: WorkloadId, port: Port) -> RedirectResponse:
    """The mount point without its slash: redirect, so the replica's relative links resolve."""
    return RedirectResponse(f"/workloads/{workload_id}/ports/{port}/", status_code=307)


@router.api_route("/workloads/{workload_id}/ports/{port}/{path:path}", methods=METHODS)
async def http_replica0(request: Request, workload_id: WorkloadId, port: Port, path: str) -> Response:
    """HTTP to replica 0."""
    return await _http(request, workload_id, 0, port, path, short=True)


@router.api_route("/workloads/{workload_id}/replicas/{replica}/ports/{port}/{path:path}", methods=METHODS)
async def http_replica(request: Request, workload_id: WorkloadId, replica: ReplicaNo, port: Port,
                       path: str) -> Response:
    """HTTP to any replica."""
    return await _http(request, workload_id, replica, port, path, short=False)


class _Browser:
    """The browser's side of a proxied WebSocket, as proxy.relay reads and writes it."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket

    async def receive_any(self) -> str | bytes | None:
        message = await self.websocket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        text: str | None = message.get("text")
        return text if text is not None else bytes(message.get("bytes") or b"")

    async def send_any(self, message: str | bytes) -> None:
        if isinstance(message, str):
            await self.websocket.send_text(message)
        else:
            await self.websocket.send_bytes(message)


async def _ws(websocket: WebSocket, workload_id: int, replica: int, port: int, path: str, short: bool) -> None:
    services: Services = websocket.app.state.services
    prefix = _prefix(workload_id, replica, port, short)
    try:
        proxy.check_same_origin("GET", websocket.headers, websocket.url.scheme, websocket=True)
        target = await run_in_threadpool(proxy.resolve_target, services.db, services.clock(),
                                         proxy.request_token(websocket.headers), workload_id, replica, port, prefix)
    except proxy.NotReadyError as exc:
        await websocket.close(WS_TRY_LATER, exc.message[:120])
        return
    except GpupoolError as exc:
        await websocket.close(WS_POLICY, exc.message[:120])
        return
    client_host = websocket.client.host if websocket.client else ""
    headers = proxy.upstream_request_headers(websocket.headers.items(), client_host, websocket.url.scheme, target)
    requested = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    try:
        upstream = await proxy.open_upstream_websocket(target, path, websocket.url.query, headers, requested)
    except ConnectionError as exc:
        await websocket.close(WS_UNREACHABLE, str(exc)[:120])
        return
    await websocket.accept(subprotocol=upstream.subprotocol)
    try:
        await proxy.relay(_Browser(websocket), upstream)
    except WebSocketDisconnect:
        pass
    finally:
        await upstream.close()


@router.websocket("/workloads/{workload_id}/ports/{port}/{path:path}")
async def ws_replica0(websocket: WebSocket, workload_id: WorkloadId, port: Port, path: str) -> None:
    """WebSocket to replica 0."""
    await _ws(websocket, workload_id, 0, port, path, short=True)


@router.websocket("/workloads/{workload_id}/replicas/{replica}/ports/{port}/{path:path}")
async def ws_replica(websocket: WebSocket, workload_id: WorkloadId, replica: ReplicaNo, port: Port,
                     path: str) -> None:
    """WebSocket to any replica."""
    await _ws(websocket, workload_id, replica, port, path, short=False)
