"""The one reverse proxy: HTTP and WebSocket from the server to a port a replica listens on.

Every path that reaches a replica (`/workloads/<id>/ports/<port>/...`, and the notebook, service and gateway
paths built on it) goes through `resolve_target`, then `forward_http` or `forward_websocket`:

- gpupool auth in front: a bearer token in the Authorization header or the `gpupool_token` cookie; the
  caller must be a member (not a viewer) of the workload's project, since reaching a replica's port is
  acting as the workload. The token is never passed on: Authorization and the gpupool cookie are removed.
- same origin: an unsafe method (anything but GET, HEAD, OPTIONS) and every WebSocket handshake is refused
  when the browser says it comes from another site (`Origin` not this server, or `Sec-Fetch-Site`
  cross-site), so a page elsewhere cannot drive a workload with the user's cookie.
- hop-by-hop headers (Connection and those it names, Keep-Alive, TE, Trailer, Transfer-Encoding, Upgrade,
  Proxy-*) are dropped both ways; redirects are never followed (the browser sees them);
  X-Forwarded-For/-Proto/-Host/-Prefix tell the replica where it is mounted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Protocol

import httpx
from sqlalchemy.orm import Session
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from gpupool.domain.errors import AuthenticationError, ConflictError, PermissionDeniedError
from gpupool.domain.notebooks import JUPYTER_PORT
from gpupool.domain.status import WorkloadStatus
from gpupool.server.endpoints import stored_endpoints
from gpupool.server.notebook_keys import COOKIE_PREFIX, NotebookKeys, cookie_name
from gpupool.server.services import notebooks
from gpupool.server.services.auth import Principal, authenticate, principal_for
from gpupool.server.services.workloads import visible_workload
from gpupool.store.db import Database
from gpupool.store.repos import accounts
from gpupool.store.repos import workloads as repo

TOKEN_COOKIE = "gpupool_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
                        "te", "trailer", "transfer-encoding", "upgrade"})
# Headers the WebSocket client library writes itself (passing them on would duplicate them).
WS_OWN_HEADERS = frozenset({"host", "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
                            "sec-websocket-protocol", "content-length"})
# Per request: connecting to a replica on this host or a LAN takes milliseconds; 10 s covers a busy replica
# accepting late. Reading has no limit (a notebook streams outputs, a service streams tokens).
CONNECT_TIMEOUT_S = 10.0


class NotReadyError(ConflictError):
    """The replica does not accept connections on that port (yet); the proxy answers 503."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a proxied request goes, and the path prefix the replica is mounted under."""

    host: str
    port: int
    prefix: str


def request_token(headers: Mapping[str, str]) -> str | None:
    """The Authorization header, else 'Bearer <gpupool_token cookie>', else None."""
    if headers.get("authorization"):
        return headers["authorization"]
    cookie = SimpleCookie()
    with contextlib.suppress(Exception):
        cookie.load(headers.get("cookie", ""))
    morsel = cookie.get(TOKEN_COOKIE)
    return f"Bearer {morsel.value}" if morsel is not None and morsel.value else None


def check_same_origin(method: str, headers: Mapping[str, str], scheme: str, websocket: bool = False) -> None:
    """PermissionDeniedError when an unsafe method or a WebSocket handshake comes from another site."""
    if method.upper() in SAFE_METHODS and not websocket:
        return
    origin = headers.get("origin")
    host = headers.get("host", "")
    if origin is not None and origin.rstrip("/").lower() not in (f"{scheme}://{host}".lower(),
                                                                 f"{_ws_to_http(scheme)}://{host}".lower()):
        raise PermissionDeniedError(f"cross-origin request from {origin} refused; open the workload through "
                                    f"this server's own address")
    if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise PermissionDeniedError("cross-site request refused; open the workload through this server's own "
                                    "address")


def _ws_to_http(scheme: str) -> str:
    return {"ws": "http", "wss": "https"}.get(scheme, scheme)


def resolve_target(db: Database, now: float, authorization: str | None, workload_id: int, replica: int,
                   port: int, prefix: str) -> Target:
    """Authenticate the caller and find where the replica listens for `port`. AuthenticationError,
    NotFoundError (no such workload, or not visible), PermissionDeniedError (a viewer), ConflictError (not
    running, no such replica or port), NotReadyError (not accepting connections yet). Blocks on the database."""
    with db.session(write=False) as session:
        principal = authenticate(session, authorization, now).principal
        row = visible_workload(session, principal, workload_id)
        if not principal.can_write(row.project_id):
            raise PermissionDeniedError("viewers cannot reach a workload's ports; ask a project admin for the "
                                        "member role")
        ports = [int(p) for p in row.spec.get("ports", [])]
        if port not in ports:
            named = ", ".join(map(str, ports)) or "none"
            raise ConflictError(f"workload {workload_id} does not name port {port} in its spec (ports: {named})")
        replicas = repo.replicas_of(session, row.id, row.attempt) if row.attempt else []
        found = [r for r in replicas if r.number == replica]
        if not found or found[0].current_state.is_terminal or row.current_status.is_terminal():
            raise ConflictError(f"replica {replica} of workload {workload_id} is not running ({row.status})")
        endpoint = next((e for e in stored_endpoints(found[0].endpoints) if e.name == port), None)
    if endpoint is None or endpoint.host is None or not endpoint.ready:
        raise NotReadyError(f"replica {replica} of workload {workload_id} does not accept connections on port "
                            f"{port} yet; try again in a moment")
    return Target(endpoint.host, endpoint.port, prefix)


def cookie_value(headers: Mapping[str, str], name: str) -> str | None:
    """The value of cookie `name` in the request's Cookie header, or None."""
    cookie = SimpleCookie()
    with contextlib.suppress(Exception):
        cookie.load(headers.get("cookie", ""))
    morsel = cookie.get(name)
    return morsel.value if morsel is not None and morsel.value else None


def _notebook_principal(session: Session, headers: Mapping[str, str], keys: NotebookKeys, workload_id: int,
                        now: float) -> Principal:
    # JupyterLab sends its own `Authorization: token <Jupyter token>` on API calls: only Bearer is gpupool's
    authorization = headers.get("authorization", "")
    if not authorization.lower().startswith("bearer "):
        gpupool_cookie = cookie_value(headers, TOKEN_COOKIE)
        authorization = f"Bearer {gpupool_cookie}" if gpupool_cookie else ""
    if authorization:
        return authenticate(session, authorization, now).principal
    value = cookie_value(headers, cookie_name(workload_id))
    grant = keys.check_session(value, workload_id, now) if value else None
    user = accounts.user_by_id(session, grant.user_id) if grant else None
    if user is None:
        raise AuthenticationError("open the notebook with `gpupool notebook open ID` (a one-time link), or send "
                                  "'Authorization: Bearer <token>'")
    return principal_for(session, user)


def resolve_notebook(db: Database, now: float, headers: Mapping[str, str], keys: NotebookKeys,
                     workload_id: int) -> tuple[Target, str]:
    """Authenticate the caller (bearer token, gpupool cookie, or this notebook's session cookie), check that
    they may open the notebook (its owner or a project admin) and find its Jupyter: (target, Jupyter token).
    Errors as resolve_target's. Blocks on the database."""
    with db.session(write=False) as session:
        principal = _notebook_principal(session, headers, keys, workload_id, now)
        row = notebooks.notebook_row(session, principal, workload_id)
        if row.current_status != WorkloadStatus.RUNNING or not row.attempt:
            raise ConflictError(f"notebook {workload_id} is {row.status}"
                                + (f"; `gpupool notebook start {workload_id}` starts it" if row.status == "stopped"
                                   else ""))
        found = [r for r in repo.replicas_of(session, row.id, row.attempt) if r.number == 0]
        endpoint = next((e for r in found for e in stored_endpoints(r.endpoints) if e.name == JUPYTER_PORT), None)
        run = row.attempt
    if endpoint is None or endpoint.host is None or not endpoint.ready:
        raise NotReadyError(f"notebook {workload_id} is starting; try again in a moment")
    return Target(endpoint.host, endpoint.port, notebooks.notebook_path(workload_id).rstrip("/")), \
        keys.jupyter_token(workload_id, run)


def _filtered(headers: Iterable[tuple[str, str]], drop: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    pairs = list(headers)
    named = {t.strip().lower() for k, v in pairs if k.lower() == "connection" for t in v.split(",")}
    return [(k, v) for k, v in pairs if k.lower() not in HOP_BY_HOP | named | drop]


def upstream_request_headers(headers: Iterable[tuple[str, str]], client_host: str, scheme: str,
                             target: Target, drop: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """The request headers passed on: hop-by-hop, Host, Authorization and the gpupool cookie removed,
    X-Forwarded-* added. Notebook session cookies (`gpupool_nb_<id>`) are removed like the gpupool cookie."""
    pairs = list(headers)
    host = next((v for k, v in pairs if k.lower() == "host"), "")
    out = [(k, v) for k, v in _filtered(pairs, drop | {"host", "authorization", "cookie", "x-forwarded-for",
                                                        "x-forwarded-proto", "x-forwarded-host",
                                                        "x-forwarded-prefix"})]
    cookies = [c for k, v in pairs if k.lower() == "cookie" for c in v.split(";")
               if c.strip() and not _gpupool_cookie(c.split("=", 1)[0].strip())]
    if cookies:
        out.append(("cookie", "; ".join(c.strip() for c in cookies)))
    out += [("x-forwarded-for", client_host), ("x-forwarded-proto", _ws_to_http(scheme)),
            ("x-forwarded-host", host), ("x-forwarded-prefix", target.prefix)]
    return out


def _gpupool_cookie(name: str) -> bool:
    return name == TOKEN_COOKIE or name.startswith(COOKIE_PREFIX)


def response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The response headers passed back: hop-by-hop (and Content-Length, which the server sets) removed."""
    return _filtered(headers, frozenset({"content-length"}))


@dataclass
class UpstreamResponse:
    """A response of the replica, its body still to be read with `body()` (which closes it at the end)."""

    status: int
    headers: list[tuple[str, str]]
    response: httpx.Response

    async def body(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk; the upstream connection is closed afterwards (also on cancel)."""
        try:
            async for chunk in self.response.aiter_raw():
                yield chunk
        finally:
            await self.response.aclose()


async def forward_http(client: httpx.AsyncClient, target: Target, method: str, path: str, query: bytes,
                       headers: list[tuple[str, str]], body: AsyncIterator[bytes]) -> UpstreamResponse:
    """Send the request to the replica without following redirects; httpx.TransportError when it cannot
    be reached."""
    url = httpx.URL(scheme="http", host=target.host, port=target.port, path="/" + path.lstrip("/"), query=query)
    request = client.build_request(method, url, headers=headers, content=body if method not in SAFE_METHODS else None)
    response = await client.send(request, stream=True, follow_redirects=False)
    return UpstreamResponse(response.status_code, response_headers(response.headers.multi_items()), response)


def new_http_client() -> httpx.AsyncClient:
    """The client the proxy shares (connection pooling); no timeout on reads, CONNECT_TIMEOUT_S to connect."""
    return httpx.AsyncClient(follow_redirects=False, trust_env=False,
                             timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT_S))


class WebSocketPeer(Protocol):
    """What `relay` needs of the browser's side of a WebSocket."""

    async def receive_any(self) -> str | bytes | None:
        """The next message, None once the peer closed."""
        ...

    async def send_any(self, message: str | bytes) -> None:
        """Send one message."""
        ...


async def open_upstream_websocket(target: Target, path: str, query: str, headers: list[tuple[str, str]],
                                  subprotocols: list[str]) -> ClientConnection:
    """Open the WebSocket to the replica (the handshake's own headers are written by the client library).
    ConnectionError when it cannot be opened."""
    url = f"ws://{target.host}:{target.port}/{path.lstrip('/')}" + (f"?{query}" if query else "")
    try:
        return await ws_connect(url, additional_headers=[(k, v) for k, v in headers if k.lower() not in WS_OWN_HEADERS],
                                subprotocols=[Subprotocol(p) for p in subprotocols] or None,
                                open_timeout=CONNECT_TIMEOUT_S, max_size=None, compression=None)
    except (OSError, InvalidHandshake, InvalidStatus, TimeoutError) as exc:
        raise ConnectionError(f"the replica refused the WebSocket ({exc})") from None


async def relay(browser: WebSocketPeer, upstream: ClientConnection) -> None:
    """Copy messages both ways until either side closes; then close the other."""

    async def down() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in upstream:
                await browser.send_any(message)

    async def up() -> None:
        while (message := await browser.receive_any()) is not None:
            await upstream.send(message)

    tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await upstream.close()
