"""A `logs -f` follower whose client goes away stops at once on the server, even when the replica prints
nothing more (no write would fail to tell it): the stream listens for the client's disconnect."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.support.servers import server_settings, start_server, wait_until

from gpupool.executors import logfiles

WAIT_S = 30.0  # generous: the machine running the tests may be loaded


def test_a_follower_that_leaves_stops_following_a_silent_replica(tmp_path: Path) -> None:
    server = start_server(server_settings(tmp_path / "home", f"sqlite:///{tmp_path / 'gpupool.db'}"))
    admin = server.client()
    gate = tmp_path / "gate"
    try:
        wid = admin.submit(f"command: echo only; while [ ! -e {gate} ]; do sleep 0.1; done\n"
                           "resources: {cpu: 0.1, memory: 64MiB}\n").workload.id
        admin.wait(wid, ["running"], timeout_s=WAIT_S)
        host, port = server.settings.host, server.settings.port
        followers = []
        for _ in range(3):
            sock = socket.create_connection((host, port), timeout=WAIT_S)
            sock.sendall(f"GET /api/v1/workloads/{wid}/logs?follow=true HTTP/1.1\r\nHost: {host}\r\n"
                         f"Authorization: Bearer {server.admin_token}\r\n\r\n".encode())
            received = b""
            while b"only\n" not in received:  # the headers, then the one line there is
                received += sock.recv(4096)
            followers.append(sock)
        wait_until(lambda: len(logfiles._FOLLOWERS) == 3, WAIT_S, 0.05, "three followers on the server")
        for sock in followers:
            sock.close()
        wait_until(lambda: not logfiles._FOLLOWERS, WAIT_S, 0.05, "the followers to stop after their clients left")
        gate.touch()
        admin.wait(wid, ["succeeded"], timeout_s=WAIT_S)
    finally:
        gate.touch()  # the replica ends even when the test failed half-way
        admin.close()
        server.stop()
