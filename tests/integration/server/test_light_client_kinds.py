"""The light client's notebook, service and pipeline calls (client/light.py, light_services.py,
light_pipelines.py) against a real server: the typed client's answers as JSON, and its errors with the same
messages, so that `gpupool notebook|service|pipeline` print what they printed on the typed client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from tests.support.servers import TestServer, wait_until

from gpupool.client import light_services as light_svc
from gpupool.client import services as typed_svc
from gpupool.client.http import Client
from gpupool.client.light import LightClient
from gpupool.client.light_pipelines import LightPipelines
from gpupool.client.pipelines import PipelineClient
from gpupool.client.settings import ClientSettings
from gpupool.domain.errors import ConflictError, GpupoolError, NotFoundError, ValidationError
from gpupool.executors.fake import SUCCEED, FakeExecutor

ON_SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the light client sees only HTTP
PIPELINE = "kind: pipeline\nname: nightly\nparams: {n: 1}\nsteps:\n  a:\n    command: echo {{params.n}}\n" \
           "  b:\n    command: 'true'\n    needs: [a]\n"
SERVICE = "kind: service\nname: web\ncommand: python -m http.server $PORT\nresources: {cpu: 1, memory: 1GiB}\n" \
          "port: 8000\nreadiness: {path: /}\nmodels: [m1]\nreplicas: {min: 1, max: 2}\n"


def light(server: TestServer) -> LightClient:
    return LightClient(ClientSettings(url=server.url, token=server.admin_token, home=server.settings.home))


def same_error(ours: Callable[[], Any], theirs: Callable[[], Any], kind: type[GpupoolError]) -> GpupoolError:
    """Both calls fail with the same error class, message (and field); return the light client's."""
    errors = []
    for call in (ours, theirs):
        with pytest.raises(GpupoolError) as caught:
            call()
        errors.append(caught.value)
    mine, typed = errors
    assert type(mine) is type(typed) and isinstance(mine, kind) and str(mine) == str(typed)
    assert getattr(mine, "field", None) == getattr(typed, "field", None)
    return mine


def dumped(items: Any) -> Any:
    return [item.model_dump(mode="json") for item in items] if isinstance(items, list) else items.model_dump(
        mode="json")


@ON_SQLITE
def test_notebook_calls_answer_as_the_typed_client(server: TestServer, admin: Client, fake: FakeExecutor) -> None:
    client = light(server)
    spec = {"kind": "notebook", "name": "explore", "idle_timeout": "2h", "resources": {"cpu": 1, "gpu": 0.5}}
    nid = client.submit(spec)["workload"]["id"]
    wait_until(lambda: client.get_workload(nid)["status"] == "running", what="the notebook running")
    assert [n["id"] for n in client.notebooks()] == [nid]
    stopped = client.stop_notebook(nid)
    assert stopped["status"] in ("stopping", "stopped")
    wait_until(lambda: client.get_workload(nid)["status"] == "stopped", what="the notebook stopped")
    ended = client.submit({**spec, "name": "ended"})["workload"]["id"]
    client.cancel(ended)
    assert client.notebooks() == dumped(admin.notebooks()) and [n["id"] for n in client.notebooks()] == [nid]
    every = client.notebooks(include_ended=True)  # the query parameter reaches the server
    assert every == dumped(admin.notebooks(include_ended=True)) and {n["id"] for n in every} == {nid, ended}
    assert client.get_workload(nid) == dumped(admin.get_workload(nid))
    same_error(lambda: client.stop_notebook(nid), lambda: admin.stop_notebook(nid), ConflictError)
    same_error(lambda: client.open_notebook(999), lambda: admin.open_notebook(999), NotFoundError)
    same_error(lambda: client.start_notebook(999), lambda: admin.start_notebook(999), NotFoundError)
    assert client.start_notebook(nid)["id"] == nid


@ON_SQLITE
def test_pipeline_calls_answer_as_the_typed_client(server: TestServer, admin: Client, fake: FakeExecutor) -> None:
    fake.default = SUCCEED  # every step's replica exits 0 after a poll
    pipes, typed = LightPipelines(light(server)), PipelineClient(admin)
    stored = pipes.submit(PIPELINE)
    assert stored["run"] is None and stored["pipeline"] == dumped(typed.get("nightly"))
    run = pipes.run("nightly", {"n": "2"})
    assert run["params"] == {"n": 2}
    wait_until(lambda: pipes.show(run["id"])["status"] == "succeeded", 60, 0.2, "the run succeeded")
    assert pipes.show(run["id"]) == dumped(typed.show(run["id"]))
    assert pipes.runs("nightly", limit=5) == dumped(typed.runs("nightly", limit=5))
    assert pipes.pause("nightly")["paused"] is True and typed.get("nightly").paused
    assert pipes.resume("nightly", project="default") == dumped(typed.get("nightly"))
    bad = same_error(lambda: pipes.run("nightly", {"m": "1"}), lambda: typed.run("nightly", {"m": "1"}),
                     ValidationError)
    assert bad.field == "params.m"
    same_error(lambda: pipes.get("nope"), lambda: typed.get("nope"), NotFoundError)
    same_error(lambda: pipes.retry(run["id"]), lambda: typed.retry(run["id"]), ConflictError)
    # a name or project with characters that mean something in a URL stays one path segment, one query value
    same_error(lambda: pipes.pause("a/b"), lambda: typed.pause("a/b"), NotFoundError)
    same_error(lambda: pipes.pause("nightly", project="x&y=z"), lambda: typed.pause("nightly", project="x&y=z"),
               NotFoundError)


@ON_SQLITE
def test_service_calls_answer_as_the_typed_client(server: TestServer, admin: Client, fake: FakeExecutor) -> None:
    client = light(server)
    client.submit(SERVICE)
    wait_until(lambda: light_svc.list_services(client), what="the service listed")
    listed = light_svc.list_services(client)
    assert [s["name"] for s in listed] == ["web"] and sorted(listed[0]) == sorted(
        dumped(typed_svc.list_services(admin))[0])
    shown = light_svc.show_service(client, "web")
    assert sorted(shown) == sorted(dumped(typed_svc.show_service(admin, "web"))) and shown["models"] == ["m1"]
    scaled = light_svc.scale_service(client, "web", None, 3)
    assert (scaled["min_replicas"], scaled["max_replicas"]) == (1, 3)
    same_error(lambda: light_svc.scale_service(client, "web", 3, 2),
               lambda: typed_svc.scale_service(admin, "web", 3, 2), ValidationError)
    same_error(lambda: light_svc.show_service(client, "nope"), lambda: typed_svc.show_service(admin, "nope"),
               NotFoundError)
    same_error(lambda: light_svc.rollback_service(client, "web"), lambda: typed_svc.rollback_service(admin, "web"),
               ConflictError)
    created = light_svc.create_service_token(client, "default", "frontend")
    assert created["token"].startswith("gps_") and created["info"]["name"] == "frontend"
    assert light_svc.list_service_tokens(client, "default") == dumped(typed_svc.list_service_tokens(admin, "default"))
    revoked = light_svc.revoke_service_token(client, "default", created["info"]["id"])
    assert revoked["revoked"] and [revoked] == dumped(typed_svc.list_service_tokens(admin, "default"))
    same_error(lambda: light_svc.revoke_service_token(client, "default", 999),
               lambda: typed_svc.revoke_service_token(admin, "default", 999), NotFoundError)


@ON_SQLITE
def test_a_bad_bound_or_token_name_is_the_servers_validation_error(server: TestServer, admin: Client,
                                                                     fake: FakeExecutor) -> None:
    """What the typed client checked itself (and raised as pydantic's error) the server checks for the light
    client: a ValidationError naming the field, which the CLI prints as a usage error."""
    client = light(server)
    with pytest.raises(ValidationError) as too_many:
        light_svc.scale_service(client, "web", None, 99)
    assert too_many.value.field == "max"
    with pytest.raises(ValidationError) as bad_name:
        light_svc.create_service_token(client, "default", "Bad Name")
    assert bad_name.value.field == "name"
