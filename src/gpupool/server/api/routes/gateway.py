"""The OpenAI-compatible gateway and the service paths: `/v1/models`, `/v1/completions`,
`/v1/chat/completions`, `/v1/embeddings` (routed by the request's `model`) and `/services/<name>/<path>`
(any HTTP, as is).

gpupool auth in front (a bearer token: the OpenAI clients' API key); the caller must be a member (not a
viewer) of the service's project to call it, and sees only its projects' models. A request goes to the ready
replica with the fewest requests in flight; with none ready it is held until one is (scale from zero) or the
service's cold_start_timeout passes (503 with the reason the replica waits). The response streams through
byte for byte (server-sent events included); a replica that cannot be reached is retried on another one,
which is safe because nothing was sent to the client yet.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from gpupool.domain.errors import GpupoolError, NotFoundError, PermissionDeniedError
from gpupool.server import proxy
from gpupool.server.api.errors import domain_error_response, error_response
from gpupool.server.context import Services
from gpupool.server.gateway import Backend, Gateway, ServiceView, metric_key
from gpupool.server.services import service_tokens
from gpupool.server.services.auth import Principal, authenticate

router = APIRouter(include_in_schema=False)
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
OPENAI_PATHS = ("completions", "chat/completions", "embeddings")
# How often a held request looks for a ready replica: 20 ms adds at most that to a cold start, and costs a
# few lock acquisitions per second per held request.
HOLD_POLL_S = 0.02
ServiceName = Annotated[str, Path(max_length=63)]
# A service submitted a moment ago is routable after the autoscaler's next pass (woken at once; a pass reads a
# few rows): a request that names no known service waits at most this long for two passes before its 404.
REFRESH_WAIT_S = 2.0


async def _refreshed(gateway: Gateway) -> None:
    """Wake the autoscaler and wait until it published twice (a pass under way may have read the store before
    the service was submitted), at most REFRESH_WAIT_S."""
    start = gateway.generation
    gateway.wake_autoscaler()
    deadline = time.monotonic() + REFRESH_WAIT_S
    while gateway.generation < start + 2 and time.monotonic() < deadline:
        await asyncio.sleep(HOLD_POLL_S)


def _principal(services: Services, request: Request) -> Principal:
    """The caller: a service token's project member, or a user (AuthenticationError otherwise)."""
    authorization = proxy.request_token(request.headers)
    with services.db.session(write=False) as session:
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        scoped = service_tokens.principal_of(session, token) if scheme.lower() == "bearer" and token else None
        return scoped or authenticate(session, authorization, services.clock()).principal


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


@router.get("/v1/models")
async def models(request: Request) -> Response:
    """The models of the services the caller may see (OpenAI's list format)."""
    services: Services = request.app.state.services
    try:
        principal = await run_in_threadpool(_principal, services, request)
    except GpupoolError as exc:
        return domain_error_response(exc)
    data = [{"id": model, "object": "model", "created": 0, "owned_by": view.name}
            for view in _gateway(request).services() if principal.can_read(view.project_id)
            for model in view.spec.models]
    return JSONResponse({"object": "list", "data": data})


def _by_model(gateway: Gateway, principal: Principal, model: Any) -> ServiceView:
    readable = [v for v in gateway.services() if model in v.spec.models and principal.can_read(v.project_id)]
    if not readable:
        raise NotFoundError(f"model {model!r} is not served by any service you may use; list them at /v1/models")
    usable = [v for v in readable if principal.can_write(v.project_id)]
    if not usable:
        raise PermissionDeniedError("viewers cannot call a project's services; ask a project admin for the "
                                    "member role")
    return min(usable, key=lambda v: (not v.backends, v.id))  # one with a ready replica first


@router.post("/v1/{endpoint:path}")
async def openai_call(request: Request, endpoint: str) -> Response:
    """Completions, chat completions and embeddings, routed by the body's `model`."""
    if endpoint not in OPENAI_PATHS:
        return error_response(404, "not_found", f"/v1/{endpoint} is not served; the gateway serves "
                                                f"{', '.join('/v1/' + p for p in OPENAI_PATHS)} and /v1/models")
    services: Services = request.app.state.services
    body = await request.body()
    try:
        proxy.check_same_origin(request.method, request.headers, request.url.scheme)
        principal = await run_in_threadpool(_principal, services, request)
        model = json.loads(body or b"{}").get("model") if body else None
        if not isinstance(model, str):
            return error_response(400, "validation", "the JSON body needs a model name in 'model'", "model")
        try:
            view = _by_model(_gateway(request), principal, model)
        except NotFoundError:
            await _refreshed(_gateway(request))
            view = _by_model(_gateway(request), principal, model)
    except (ValueError, AttributeError):
        return error_response(400, "validation", "the body must be a JSON object", "body")
    except GpupoolError as exc:
        return domain_error_response(exc)
    return await _forward(request, view, f"v1/{endpoint}", body, "")


@router.api_route("/services/{name}/{path:path}", methods=METHODS)
async def service_path(request: Request, name: ServiceName, path: str) -> Response:
    """Any HTTP request to a replica of service `name`, as is (mounted at /services/<name>)."""
    services: Services = request.app.state.services
    body = await request.body()
    try:
        proxy.check_same_origin(request.method, request.headers, request.url.scheme)
        principal = await run_in_threadpool(_principal, services, request)
        found = [v for v in _gateway(request).services() if v.name == name and principal.can_read(v.project_id)]
        if not found:
            await _refreshed(_gateway(request))
            found = [v for v in _gateway(request).services() if v.name == name and principal.can_read(v.project_id)]
        if not found:
            raise NotFoundError(f"service {name!r} not found among your projects' services")
        view = max(found, key=lambda v: v.id)
        if not principal.can_write(view.project_id):
            raise PermissionDeniedError("viewers cannot call a project's services; ask a project admin for the "
                                        "member role")
    except GpupoolError as exc:
        return domain_error_response(exc)
    return await _forward(request, view, path, body, f"/services/{name}")


async def _held(gateway: Gateway, view: ServiceView) -> Backend | Response:
    """Hold the request until a replica is ready, or answer 503 (queue full, or the cold start timed out)."""
    if not gateway.hold(view.id):
        return error_response(503, "not_ready", f"service {view.name} has {view.spec.scaling.max_queue} requests "
                                                f"waiting for a replica already (max_queue); try again later")
    timeout = view.spec.scaling.cold_start_timeout_s
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            backend = gateway.acquire(view.id)
            if backend is not None:
                return backend
            await asyncio.sleep(HOLD_POLL_S)
    finally:
        gateway.unhold(view)
    current = gateway.service(view.id) or view
    return error_response(503, "not_ready", f"service {view.name} has no ready replica after {timeout}s "
                                            f"(cold_start_timeout): {current.waiting_reason}")


async def _forward(request: Request, view: ServiceView, path: str, body: bytes, prefix: str) -> Response:
    services: Services = request.app.state.services
    gateway = _gateway(request)
    started = time.monotonic()
    backend: Backend | Response | None = gateway.acquire(view.id) or await _held(gateway, view)
    tried: set[int] = set()
    while True:
        if not isinstance(backend, Backend):
            response = backend or error_response(502, "bad_gateway", f"no replica of service {view.name} could "
                                                                      f"be reached")
            gateway.metrics.requests.labels(*metric_key(view), str(response.status_code)).inc()
            gateway.traffic.request(view.id, response.status_code)
            return response
        target = proxy.Target(backend.host, backend.port, prefix)
        client_host = request.client.host if request.client else ""
        headers = proxy.upstream_request_headers(request.headers.items(), client_host, request.url.scheme, target)
        try:
            upstream = await proxy.forward_http(services.proxy_client(), target, request.method, path,
                                                request.url.query.encode(), headers, _once(body))
        except httpx.TransportError:
            gateway.release(view.id, backend)  # nothing reached the client: another replica may answer
            tried.add(backend.workload_id)
            backend = gateway.acquire(view.id, exclude=frozenset(tried))
            continue
        merged: dict[str, str] = {}
        for key, value in upstream.headers:
            merged[key] = f"{merged[key]}, {value}" if key in merged and key.lower() != "set-cookie" else value
        return StreamingResponse(_relay(gateway, view, backend, upstream, started), status_code=upstream.status,
                                 headers=merged)


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def _relay(gateway: Gateway, view: ServiceView, backend: Backend, upstream: proxy.UpstreamResponse,
                 started: float) -> AsyncIterator[bytes]:
    """The replica's body as it arrives, counted; the replica is released when it ends or the client leaves."""
    metrics = gateway.metrics
    first = True
    try:
        async for chunk in upstream.body():
            if first:
                metrics.first_byte.labels(*metric_key(view)).observe(time.monotonic() - started)
                first = False
            metrics.chunks.labels(*metric_key(view)).inc()
            gateway.traffic.chunk(view.id)
            yield chunk
    finally:
        gateway.release(view.id, backend)
        metrics.total.labels(*metric_key(view)).observe(time.monotonic() - started)
        metrics.requests.labels(*metric_key(view), str(upstream.status)).inc()
        gateway.traffic.request(view.id, upstream.status)
