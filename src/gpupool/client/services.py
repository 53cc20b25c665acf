"""Client calls for services (`gpupool service ...`), on top of the typed HTTP client."""

from __future__ import annotations

from urllib.parse import quote

from gpupool.api import service_schemas as api
from gpupool.client.http import Client

API = "/api/v1/services"


def list_services(client: Client) -> list[api.ServiceSummary]:
    """Running services the caller may see."""
    return client._get(API, list[api.ServiceSummary])


def show_service(client: Client, name: str) -> api.ServiceDetail:
    """One service with its replicas and history."""
    return client._get(f"{API}/{quote(name, safe='')}", api.ServiceDetail)


def scale_service(client: Client, name: str, low: int | None, high: int | None) -> api.ServiceDetail:
    """Set the service's replica bounds (None keeps a bound)."""
    return client._send("POST", f"{API}/{quote(name, safe='')}/scale", api.ServiceDetail,
                        api.ScaleRequest(min=low, max=high))


def update_service(client: Client, name: str, spec_yaml: str) -> api.ServiceDetail:
    """Roll out a new spec (YAML text of a kind: service spec with the same name)."""
    return client._send("POST", f"{API}/{quote(name, safe='')}/update", api.ServiceDetail, {"spec_yaml": spec_yaml})


def rollback_service(client: Client, name: str) -> api.ServiceDetail:
    """Roll back to the spec before the current one."""
    return client._send("POST", f"{API}/{quote(name, safe='')}/rollback", api.ServiceDetail, None)
