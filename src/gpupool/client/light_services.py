"""Service calls of the light client (`gpupool service ...`): the same requests as client/services.py (the typed
calls the SDK uses), answering with the server's JSON as plain dicts and lists. Standard library only."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from gpupool.client.light import JsonObject, LightClient

API = "/api/v1/services"  # as client/services.py's


def _service(name: str) -> str:
    return f"{API}/{quote(name, safe='')}"


def _tokens_path(project: str) -> str:
    return f"/api/v1/projects/{quote(project, safe='')}/service-tokens"


def list_services(client: LightClient) -> list[JsonObject]:
    """Running services the caller may see (service_schemas.ServiceSummary as JSON)."""
    return client.get(API)  # type: ignore[no-any-return]


def show_service(client: LightClient, name: str) -> JsonObject:
    """One service with its replicas and history (service_schemas.ServiceDetail as JSON)."""
    return client.get(_service(name))  # type: ignore[no-any-return]


def scale_service(client: LightClient, name: str, low: int | None, high: int | None) -> JsonObject:
    """Set the service's replica bounds (None keeps a bound); the server checks them."""
    return client.send("POST", f"{_service(name)}/scale", {"min": low, "max": high})  # type: ignore[no-any-return]


def update_service(client: LightClient, name: str, spec_yaml: str) -> JsonObject:
    """Roll out a new spec (YAML text of a kind: service spec with the same name)."""
    return client.send("POST", f"{_service(name)}/update", {"spec_yaml": spec_yaml})  # type: ignore[no-any-return]


def rollback_service(client: LightClient, name: str) -> JsonObject:
    """Roll back to the spec before the current one."""
    return client.send("POST", f"{_service(name)}/rollback")  # type: ignore[no-any-return]


def create_service_token(client: LightClient, project: str, name: str) -> JsonObject:
    """A token that may call the gateway for `project`'s services only (schemas.ServiceTokenCreated as JSON; its
    text is in `token`, once)."""
    return client.send("POST", _tokens_path(project), {"name": name})  # type: ignore[no-any-return]


def list_service_tokens(client: LightClient, project: str) -> list[JsonObject]:
    """The project's service tokens, never their secret (schemas.ServiceToken as JSON)."""
    return client.get(_tokens_path(project))  # type: ignore[no-any-return]


def revoke_service_token(client: LightClient, project: str, token_id: int) -> JsonObject:
    """Revoke one of the project's service tokens (schemas.ServiceToken as JSON)."""
    return client.send("DELETE", f"{_tokens_path(project)}/{int(token_id)}")  # type: ignore[no-any-return]
