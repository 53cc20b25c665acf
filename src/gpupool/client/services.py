"""Client calls for services, on top of the typed HTTP client (the SDK's; `gpupool service ...` uses the light
client's, client/light_services.py).

Client is imported for type hints only: importing this module does not import httpx."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from gpupool.api import schemas
from gpupool.api import service_schemas as api

if TYPE_CHECKING:
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


def _tokens_path(project: str) -> str:
    return f"/api/v1/projects/{quote(project, safe='')}/service-tokens"


def create_service_token(client: Client, project: str, name: str) -> schemas.ServiceTokenCreated:
    """A token that may call the gateway for `project`'s services only (its text is in the result, once)."""
    return client._send("POST", _tokens_path(project), schemas.ServiceTokenCreated,
                        schemas.ServiceTokenCreate(name=name))


def list_service_tokens(client: Client, project: str) -> list[schemas.ServiceToken]:
    """The project's service tokens (never their secret)."""
    return client._get(_tokens_path(project), list[schemas.ServiceToken])


def revoke_service_token(client: Client, project: str, token_id: int) -> schemas.ServiceToken:
    """Revoke one of the project's service tokens."""
    return client._send("DELETE", f"{_tokens_path(project)}/{int(token_id)}", schemas.ServiceToken, None)
