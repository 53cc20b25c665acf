"""The reverse proxy, end to end: a real server with the local executor runs a tiny HTTP + WebSocket server as
a workload (`ports: [8080]`); requests reach it through /workloads/<id>/ports/8080/ with gpupool auth in
front, same-origin checks, no redirects followed and hop-by-hop headers dropped."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.integration.server.conftest import ServerFactory
from tests.support.servers import TestServer, wait_until
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from gpupool.executors.local import LocalExecutor

ECHO_APP = Path(__file__).resolve().parents[2] / "support" / "echo_app.py"


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: the proxy reads the store like every route; both databases are covered elsewhere."""
    return f"sqlite:///{tmp_path / 'gpupool.db'}"


@pytest.fixture
def running(server_factory: ServerFactory, tmp_path: Path) -> Iterator[tuple[TestServer, int]]:
    # the local executor (real processes) with a fresh HOME, so no login files of this machine slow the start
    home = tmp_path / "replica-home"
    home.mkdir()
    executor = LocalExecutor(tmp_path / "executor", base_env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                                              "HOME": str(home), "LANG": "C.UTF-8"})
    server = server_factory(executor)
    with server.client() as admin:
        wid = admin.submit(f"name: echo\nports: [8080]\nresources: {{cpu: 0.5, memory: 256MiB}}\n"
                           f"command: {sys.executable} {ECHO_APP}\n").workload.id

        def ready() -> bool:
            replicas = admin.get_workload(wid).replica_list
            return bool(replicas and replicas[0].endpoints and replicas[0].endpoints[0].ready)

        try:
            wait_until(ready, 60, 0.1, "the echo workload listening")  # Python and uvicorn start in ~1 s unloaded
            yield server, wid
        finally:
            admin.cancel(wid)


def auth(server: TestServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.admin_token}"}


def test_http_reaches_the_replica_without_the_token_and_with_forwarding_headers(
        running: tuple[TestServer, int]) -> None:
    server, wid = running
    base = f"{server.url}/workloads/{wid}/ports/8080"
    detail = server.client().get_workload(wid).replica_list[0].endpoints[0]
    assert (detail.port, detail.host, detail.proxy_path) == (8080, "127.0.0.1", f"/workloads/{wid}/ports/8080/")
    assert detail.node_port != 8080  # a free port chosen on the node, given as GPUPOOL_PORT
    response = httpx.post(f"{base}/api/echo?x=1", content=b"hello", headers={
        **auth(server), "Cookie": "gpupool_token=secret; theme=dark", "Connection": "x-drop-me",
        "X-Drop-Me": "1", "TE": "trailers", "X-Kept": "yes"})
    assert response.status_code == 200
    seen = response.json()
    headers = dict(seen["headers"])
    assert (seen["method"], seen["path"], seen["query"], seen["body"]) == ("POST", "/api/echo", "x=1", "hello")
    assert "authorization" not in headers and headers["cookie"] == "theme=dark"
    assert "x-drop-me" not in headers and "te" not in headers and headers["x-kept"] == "yes"
    assert headers["x-forwarded-prefix"] == f"/workloads/{wid}/ports/8080"
    assert headers["x-forwarded-host"] == server.url.removeprefix("http://")


def test_redirects_pass_through_and_hop_by_hop_response_headers_are_dropped(running: tuple[TestServer, int]) -> None:
    server, wid = running
    base = f"{server.url}/workloads/{wid}/ports/8080"
    redirect = httpx.get(f"{base}/redirect", headers=auth(server))
    assert (redirect.status_code, redirect.headers["location"]) == (302, "/elsewhere")
    hop = httpx.get(f"{base}/hop", headers=auth(server))
    assert hop.headers["x-kept"] == "yes" and "x-hop" not in hop.headers and "keep-alive" not in hop.headers


def test_auth_roles_and_same_origin_are_enforced(running: tuple[TestServer, int]) -> None:
    server, wid = running
    base = f"{server.url}/workloads/{wid}/ports/8080"
    assert httpx.get(f"{base}/").status_code == 401
    assert httpx.get(f"{base}/", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(f"{base}/", cookies={"gpupool_token": server.admin_token}).status_code == 200
    cross = httpx.post(f"{base}/x", headers={**auth(server), "Origin": "https://evil.example"})
    assert cross.status_code == 403 and "cross-origin" in cross.json()["error"]["message"]
    same = httpx.post(f"{base}/x", headers={**auth(server), "Origin": server.url})
    assert same.status_code == 200
    # a viewer of the project may see the workload but not act through its ports
    with server.client() as admin:
        token = admin.create_user("vera", project="default", role="viewer").token
    viewer = httpx.get(f"{base}/", headers={"Authorization": f"Bearer {token}"})
    assert viewer.status_code == 403
    assert httpx.get(f"{server.url}/workloads/{wid}/ports/9999/", headers=auth(server)).status_code == 409
    assert httpx.get(f"{server.url}/workloads/999/ports/8080/", headers=auth(server)).status_code == 404


def test_websocket_messages_go_both_ways(running: tuple[TestServer, int]) -> None:
    server, wid = running
    url = f"ws://127.0.0.1:{server.settings.port}/workloads/{wid}/ports/8080/socket"
    with connect(url, additional_headers=auth(server), subprotocols=["chat"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "chat"
        ws.send("hi")
        assert ws.recv(timeout=10) == "echo:hi"
        ws.send(b"\x00\x01")
        assert ws.recv(timeout=10) == b"echo:\x00\x01"
    with pytest.raises(InvalidStatus), connect(url):
        pass  # no token: refused at the handshake
    with pytest.raises(InvalidStatus), connect(url, additional_headers={**auth(server), "Origin": "http://evil"}):
        pass
