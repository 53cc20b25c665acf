"""Proxy routes: HTTP and WebSocket to a port a replica listens on (`gpupool.server.proxy` does the work).

`/workloads/<id>/ports/<port>/<path>` reaches replica 0; `/workloads/<id>/replicas/<n>/ports/<port>/<path>`
any replica. The port is the one named in the spec's `ports:`. `/notebooks/<id>/<path>` reaches a notebook's
JupyterLab (owner and project admins only; `?ptoken=` opens it in a browser).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Annotated, Any, TypeVar
from urllib.parse import urlencode

import httpx
from fastapi import APIRouter, Path, Request, WebSocket
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect

from gpupool.domain.errors import GpupoolError
from gpupool.server import proxy
from gpupool.server.api.errors import domain_error_response, error_response
from gpupool.server.context import Services
from gpupool.server.notebook_keys import SESSION_TTL_S, NotebookKeys

_T = TypeVar("_T")

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
    return _streaming(upstream)


def _streaming(upstream: proxy.UpstreamResponse) -> StreamingResponse:
    """The replica's response streamed back with its headers as they came (repeated Set-Cookie kept)."""
    response = StreamingResponse(upstream.body(), status_code=upstream.status)
    response.raw_headers[:] = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in upstream.headers]
    return response


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
    target = await _resolve_or_close(websocket, proxy.resolve_target, services.db, services.clock(),
                                     proxy.request_token(websocket.headers), workload_id, replica, port, prefix)
    if target is None:
        return
    client_host = websocket.client.host if websocket.client else ""
    headers = proxy.upstream_request_headers(websocket.headers.items(), client_host, websocket.url.scheme, target)
    await _relay_websocket(websocket, target, path, headers)


async def _relay_websocket(websocket: WebSocket, target: proxy.Target, path: str,
                           headers: list[tuple[str, str]]) -> None:
    """Open the upstream WebSocket with the browser's subprotocols, accept with the one chosen, relay."""
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


# ---------------------------------------------------------------------------------------- notebooks
# `/notebooks/<id>/...` reaches the notebook's JupyterLab (started with base_url=/notebooks/<id>/, so paths pass
# unchanged). Only its owner and the project's admins get through; the proxy adds Jupyter's token, and since
# Jupyter skips its own Origin and XSRF checks for token-authenticated requests, the same-origin check here is
# the one that stops a page elsewhere from driving the notebook.
PTOKEN = "ptoken"  # not `token`: Jupyter reads ?token= itself


def _notebook_keys(services: Services) -> NotebookKeys:
    if services.notebook_keys is None:
        raise RuntimeError("the server was built without notebook keys")
    return services.notebook_keys


def _upstream_path(workload_id: int, path: str) -> str:
    return f"notebooks/{workload_id}/{path}"


def _redeem(request: Request, workload_id: int) -> Response:
    """Swap a one-time ?ptoken= for the notebook's session cookie and redirect to the same URL without it."""
    services: Services = request.app.state.services
    keys, now = _notebook_keys(services), services.clock()
    grant = keys.redeem_open_token(request.query_params[PTOKEN], workload_id, now)
    if grant is None:
        return error_response(401, "authentication", "this notebook link expired or was already used; run "
                                                     f"`gpupool notebook open {workload_id}` for a new one")
    name, value = keys.session_cookie(grant.user_id, workload_id, now)
    rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != PTOKEN])
    response = RedirectResponse(request.url.path + (f"?{rest}" if rest else ""), status_code=302)
    response.set_cookie(name, value, max_age=SESSION_TTL_S, path=f"/notebooks/{workload_id}/", httponly=True,
                        samesite="lax", secure=request.url.scheme == "https")
    return response


@router.api_route("/notebooks/{workload_id}", methods=METHODS)
async def notebook_root(request: Request, workload_id: WorkloadId) -> RedirectResponse:
    """The notebook's mount point without its slash: redirect (query kept), so relative links resolve."""
    query = f"?{request.url.query}" if request.url.query else ""
    return RedirectResponse(f"/notebooks/{workload_id}/{query}", status_code=307)


@router.api_route("/notebooks/{workload_id}/{path:path}", methods=METHODS)
async def notebook_http(request: Request, workload_id: WorkloadId, path: str) -> Response:
    """HTTP to the notebook's Jupyter (a `?ptoken=` is first swapped for the session cookie)."""
    services: Services = request.app.state.services
    if PTOKEN in request.query_params:
        return _redeem(request, workload_id)
    try:
        proxy.check_same_origin(request.method, request.headers, request.url.scheme)
        target, token = await run_in_threadpool(proxy.resolve_notebook, services.db, services.clock(),
                                                request.headers, _notebook_keys(services), workload_id)
    except proxy.NotReadyError as exc:
        return error_response(503, "not_ready", exc.message)
    except GpupoolError as exc:
        return domain_error_response(exc)
    client_host = request.client.host if request.client else ""
    headers = proxy.upstream_request_headers(request.headers.items(), client_host, request.url.scheme, target)
    headers.append(("authorization", f"token {token}"))
    try:
        upstream = await proxy.forward_http(services.proxy_client(), target, request.method,
                                            _upstream_path(workload_id, path), request.url.query.encode(), headers,
                                            request.stream())
    except httpx.TransportError as exc:
        return error_response(502, "bad_gateway", f"notebook {workload_id} could not be reached "
                                                  f"({type(exc).__name__})")
    return _streaming(upstream)


@router.websocket("/notebooks/{workload_id}/{path:path}")
async def notebook_ws(websocket: WebSocket, workload_id: WorkloadId, path: str) -> None:
    """WebSocket to the notebook's Jupyter (kernels, terminals, events); subprotocols passed on."""
    services: Services = websocket.app.state.services
    resolved = await _resolve_or_close(websocket, proxy.resolve_notebook, services.db, services.clock(),
                                       websocket.headers, _notebook_keys(services), workload_id)
    if resolved is None:
        return
    target, token = resolved
    client_host = websocket.client.host if websocket.client else ""
    headers = proxy.upstream_request_headers(websocket.headers.items(), client_host, websocket.url.scheme, target)
    headers.append(("authorization", f"token {token}"))
    await _relay_websocket(websocket, target, _upstream_path(workload_id, path), headers)


# ------------------------------------------------------------------------------------------ tunnel
# `/workloads/<id>/tunnel/<port>`: a WebSocket that carries the raw bytes of one TCP connection to the port
# replica 0 listens on (`gpupool port-forward` opens one per local connection), for tools that need a plain
# port rather than HTTP under a path. Same auth and same-origin rule as the HTTP proxy.
TUNNEL_CHUNK = 64 * 1024  # bytes read from the replica per message: a socket buffer's worth


@router.websocket("/workloads/{workload_id}/tunnel/{port}")
async def tunnel(websocket: WebSocket, workload_id: WorkloadId, port: Port) -> None:
    """Relay one TCP connection to the replica's port over this WebSocket (binary messages both ways)."""
    services: Services = websocket.app.state.services
    try:
        proxy.check_same_origin("GET", websocket.headers, websocket.url.scheme, websocket=True)
        target = await run_in_threadpool(proxy.resolve_target, services.db, services.clock(),
                                         proxy.request_token(websocket.headers), workload_id, 0, port,
                                         f"/workloads/{workload_id}/tunnel/{port}")
    except proxy.NotReadyError as exc:
        await websocket.close(WS_TRY_LATER, exc.message[:120])
        return
    except GpupoolError as exc:
        await websocket.close(WS_POLICY, exc.message[:120])
        return
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(target.host, target.port),
                                                proxy.CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        await websocket.close(WS_UNREACHABLE, f"the replica refused the connection ({exc})"[:120])
        return
    await websocket.accept()
    await _pump(websocket, reader, writer)


async def _pump(websocket: WebSocket, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    async def down() -> None:
        while chunk := await reader.read(TUNNEL_CHUNK):
            await websocket.send_bytes(chunk)

    async def up() -> None:
        browser = _Browser(websocket)
        while (message := await browser.receive_any()) is not None:
            writer.write(message.encode() if isinstance(message, str) else message)
            await writer.drain()

    tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        writer.close()
        with contextlib.suppress(Exception):
            await websocket.close()


async def _resolve_or_close(websocket: WebSocket, resolve: Callable[..., _T], *args: Any) -> _T | None:
    """Check the handshake's origin and run `resolve(*args)` off the event loop; on refusal close the
    WebSocket (try-later when the replica is not ready, policy otherwise) and return None."""
    try:
        proxy.check_same_origin("GET", websocket.headers, websocket.url.scheme, websocket=True)
        return await run_in_threadpool(resolve, *args)
    except proxy.NotReadyError as exc:
        await websocket.close(WS_TRY_LATER, exc.message[:120])
    except GpupoolError as exc:
        await websocket.close(WS_POLICY, exc.message[:120])
    return None
