"""Stored replica endpoints and the readiness probe (a real listening socket, then a closed one)."""

from __future__ import annotations

import socket

from gpupool.executors.base import Endpoint
from gpupool.server.endpoints import StoredEndpoint, launched_endpoints, probe, stored_endpoints, with_ready


def test_the_column_round_trips_and_marks_ready() -> None:
    chosen = {"8888": {"port": 41001}, "6006": {"port": 41002}}  # as the scheduling loop stores it at bind
    assert stored_endpoints(chosen) == [StoredEndpoint(6006, None, 41002, False),
                                        StoredEndpoint(8888, None, 41001, False)]
    launched = launched_endpoints({8888: Endpoint("127.0.0.1", 41001), 6006: Endpoint("127.0.0.1", 41002)})
    ready = with_ready(launched, {8888})
    assert [(e.name, e.host, e.ready) for e in stored_endpoints(ready)] == [(6006, "127.0.0.1", False),
                                                                             (8888, "127.0.0.1", True)]
    assert stored_endpoints(None) == []


def test_probe_sees_a_listener_and_not_a_closed_port() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert probe("127.0.0.1", port)
    assert not probe("127.0.0.1", port)  # closed now: refused at once, well within the timeout
