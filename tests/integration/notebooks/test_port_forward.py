"""`gpupool port-forward`: a local port reaches a port a job listens on, through the server's tunnel
(/workloads/<id>/tunnel/<port>), with the same auth as the proxy."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.support.servers import TestServer, server_settings, start_server, wait_until
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from gpupool.executors.local import LocalExecutor

ECHO_APP = Path(__file__).resolve().parents[2] / "support" / "echo_app.py"


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestServer, int]]:
    tmp = tmp_path_factory.mktemp("forward")
    home = tmp / "replica-home"
    home.mkdir()
    executor = LocalExecutor(tmp / "executor", base_env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                                         "HOME": str(home), "LANG": "C.UTF-8"})
    server = start_server(server_settings(tmp / "home", f"sqlite:///{tmp / 'gpupool.db'}"), executor)
    with server.client() as admin:
        wid = admin.submit(f"name: echo\nports: [8080]\nresources: {{cpu: 0.5, memory: 256MiB}}\n"
                           f"command: {sys.executable} {ECHO_APP}\n").workload.id

        def ready() -> bool:
            replicas = admin.get_workload(wid).replica_list
            return bool(replicas and replicas[0].endpoints and replicas[0].endpoints[0].ready)

        try:
            wait_until(ready, 60, 0.1, "the echo workload listening")
            yield server, wid
        finally:
            admin.cancel(wid)
            admin.wait(wid, ["cancelled"], timeout_s=30)
            wait_until(lambda: admin.get_workload(wid).replica_list[0].state == "stopped", 30, 0.1, "echo stopped")
    server.stop()


def test_port_forward_round_trip(echo: tuple[TestServer, int]) -> None:
    server, wid = echo
    env = {**os.environ, "GPUPOOL_URL": server.url, "GPUPOOL_TOKEN": server.admin_token, "COLUMNS": "200"}
    process = subprocess.Popen([sys.executable, "-m", "gpupool", "port-forward", str(wid), "8080"], env=env,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # "forwarding 127.0.0.1:PORT -> workload ID port 8080; ..."
        local = int(line.split()[1].rsplit(":", 1)[1])
        for body in (b"one", b"x" * 300_000):  # several TCP segments and WebSocket messages
            response = httpx.post(f"http://127.0.0.1:{local}/api/echo?q=1", content=body, timeout=30)
            seen = response.json()
            assert (response.status_code, seen["path"], seen["query"], len(seen["body"])) == (
                200, "/api/echo", "q=1", len(body))
    finally:
        process.terminate()
        process.wait(10)


def test_tunnel_needs_a_member_token_and_a_named_port(echo: tuple[TestServer, int]) -> None:
    server, wid = echo
    url = f"ws://127.0.0.1:{server.settings.port}/workloads/{wid}/tunnel/8080"
    with server.client() as admin:
        viewer = admin.create_user("vic", project="default", role="viewer").token
    for headers in ({}, {"Authorization": f"Bearer {viewer}"},
                    {"Authorization": f"Bearer {server.admin_token}", "Origin": "https://evil.example"}):
        with pytest.raises(InvalidStatus), connect(url, additional_headers=headers):
            pass
    with pytest.raises(InvalidStatus), connect(url.replace("8080", "9999"),
                                               additional_headers={"Authorization": f"Bearer {server.admin_token}"}):
        pass
    with connect(url, additional_headers={"Authorization": f"Bearer {server.admin_token}"}) as ws:
        ws.send(b"GET /tunnel HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert ws.recv(timeout=10)[:12] == b"HTTP/1.1 200"  # type: ignore[index]
