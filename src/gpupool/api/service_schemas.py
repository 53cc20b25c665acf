"""API types of services (`kind: service`): what `gpupool service ls|show|scale` send and receive.

Only pydantic here (no server imports), so the client can use these types without loading the server.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from gpupool.api.schemas import Event, Model

MAX_SERVICE_REPLICAS = 64  # as gpupool.domain.services (the API does not import the domain)


class ServiceReplica(Model):
    """One replica of a service: its child workload, whether the gateway routes to it, its load."""

    workload_id: int
    status: str
    ready: bool
    draining: bool
    inflight: int
    pending_reason: str | None = None


class ServiceSummary(Model):
    """One line of `gpupool service ls`."""

    id: int
    name: str
    project: str
    state: str  # serving | starting | scaled to zero | ended (<status>)
    models: list[str]
    min_replicas: int
    max_replicas: int
    replicas: int  # live replica workloads
    ready: int
    inflight: int
    held: int
    waiting_reason: str = ""


class ServiceDetail(ServiceSummary):
    """`gpupool service show`: the summary, the spec, the replicas and the service's history."""

    spec: dict[str, Any]
    replica_list: list[ServiceReplica]
    events: list[Event]


class ScaleRequest(Model):
    """New bounds of a service's replica count (a field left out keeps its value)."""

    min: int | None = Field(None, ge=0, le=MAX_SERVICE_REPLICAS)
    max: int | None = Field(None, ge=1, le=MAX_SERVICE_REPLICAS)
