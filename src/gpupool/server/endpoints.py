"""Replica endpoints as the server stores them, and the readiness probe.

A replica whose spec names `ports:` gets, per port, a record in `ReplicaRow.endpoints`:
`{"<name>": {"port": chosen at bind time, "host": set at launch from Executor.endpoints, "ready": bool}}`.
The reconciler probes running replicas' endpoints that are not ready yet (a TCP connect) and marks them
ready once something accepts connections; the proxy forwards only to ready endpoints.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gpupool.executors.base import Endpoint

# A connect to a listening port on the loopback or a LAN answers in well under a millisecond; 0.2 s leaves room
# for a loaded machine while bounding how long one reconciler pass can spend on a port that never opens.
PROBE_TIMEOUT_S = 0.2


@dataclass(frozen=True, slots=True)
class StoredEndpoint:
    """One endpoint of a replica as stored: the port's name in the spec, where it listens, whether it is ready."""

    name: int
    host: str | None
    port: int
    ready: bool


def stored_endpoints(data: Mapping[str, Any] | None) -> list[StoredEndpoint]:
    """The endpoints in a replica row's `endpoints` column, by port name."""
    return sorted((StoredEndpoint(int(name), e.get("host"), int(e["port"]), bool(e.get("ready")))
                   for name, e in (data or {}).items()), key=lambda e: e.name)


def launched_endpoints(reported: Mapping[int, Endpoint]) -> dict[str, Any]:
    """The column value once the executor reported where the replica listens (none ready yet)."""
    return {str(name): {"host": e.host, "port": e.port, "ready": False} for name, e in sorted(reported.items())}


def with_ready(data: Mapping[str, Any], names: set[int]) -> dict[str, Any]:
    """A copy of the column value with the endpoints named `names` marked ready."""
    return {name: {**e, "ready": True} if int(name) in names else dict(e) for name, e in data.items()}


def probe(host: str, port: int, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """True when something accepts TCP connections on host:port within `timeout_s`. Blocks at most that long."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False
