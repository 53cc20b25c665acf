"""Batch submission over HTTP: all items stored in one transaction or none, permissions, idempotency."""

from __future__ import annotations

import httpx
import pytest
from tests.integration.server.conftest import ServerFactory
from tests.support.servers import TestServer

from gpupool.api import schemas
from gpupool.api.schemas import MAX_BATCH
from gpupool.client.http import Client
from gpupool.domain.errors import ConflictError, PermissionDeniedError, UnsatisfiableError, ValidationError
from gpupool.executors.fake import FakeExecutor

JOB = "name: {name}\ncommand: python train.py\nresources: {{cpu: 1, memory: 1GiB, gpu: {gpu}}}\n"


def job(name: str, gpu: float = 1, project: str | None = None) -> str:
    return JOB.format(name=name, gpu=gpu) + (f"project: {project}\n" if project else "")


def stored_names(client: Client) -> list[str]:
    return sorted(w.name for w in client.list_workloads(status=[], limit=1000).items)


def test_a_batch_stores_every_item_in_order_and_wakes_the_scheduler(admin: Client) -> None:
    answer = admin.submit_batch([job("a"), {"kind": "job", "name": "b", "command": "true"}, job("c", 0.5)])
    ids = [item.workload.id for item in answer.items]
    assert [item.workload.name for item in answer.items] == ["a", "b", "c"]
    assert all(item.created for item in answer.items) and ids == sorted(ids) and len(set(ids)) == 3
    assert answer.items[0].workload.events[0].reason.startswith("submitted by admin")
    for wid in ids:  # every item is placed and started (the fake executor's replicas run until stopped)
        assert admin.wait(wid, statuses=["running"], timeout_s=30).replica_list


def test_an_invalid_item_refuses_the_whole_batch_and_names_the_item(admin: Client) -> None:
    with pytest.raises(ValidationError) as refused:
        admin.submit_batch([job("ok"), "name: bad\ncommand: true\nresources: {gpu: lots}\n"])
    assert refused.value.field is not None and refused.value.field.startswith("items[1].resources")
    assert stored_names(admin) == []


def test_an_item_refused_in_the_transaction_rolls_back_the_items_before_it(admin: Client) -> None:
    # items 0 and 1 are inserted before item 2 is found never to fit (4 cards in the pool): none may stay
    with pytest.raises(UnsatisfiableError) as refused:
        admin.submit_batch([job("first"), job("second"), job("huge", 64)])
    assert refused.value.field == "items[2].resources"
    assert stored_names(admin) == []
    admin.submit_batch([job("first")])  # the pool is fine afterwards
    assert stored_names(admin) == ["first"]


def test_size_limits_are_clear(admin: Client, server: TestServer) -> None:
    with pytest.raises(ValueError, match="a batch has 1 to"):
        admin.submit_batch([])
    for count in (0, MAX_BATCH + 1):  # the server says the same to a client that does not check
        body = {"items": [{"spec_yaml": job(f"j{k}")} for k in range(count)]}
        response = httpx.post(f"{server.url}/api/v1/workloads/batch", json=body,
                              headers={"Authorization": f"Bearer {server.admin_token}"}, timeout=30)
        assert response.status_code == 422 and response.json()["error"]["field"] == "items"
    assert stored_names(admin) == []


@pytest.fixture
def team(admin: Client, server: TestServer) -> dict[str, Client]:
    """Projects vision and nlp; alice (member of vision) and victor (viewer of vision)."""
    admin.create_project("vision")
    admin.create_project("nlp")
    tokens = {name: admin.create_user(name, project="vision", role=role).token
              for name, role in (("alice", "member"), ("victor", "viewer"))}
    return {name: server.client(token) for name, token in tokens.items()}


def test_a_batch_may_only_reach_the_callers_projects(team: dict[str, Client], admin: Client,
                                                     server: TestServer) -> None:
    alice, victor = team["alice"], team["victor"]
    with pytest.raises(ValidationError) as refused:  # nlp looks unknown to alice
        alice.submit_batch([job("mine", project="vision"), job("theirs", project="nlp")])
    assert refused.value.field == "items[1].project"
    with pytest.raises(PermissionDeniedError, match=r"items\[0\]: you may only view project vision"):
        victor.submit_batch([job("peek", project="vision")])
    anonymous = httpx.post(f"{server.url}/api/v1/workloads/batch", json={"items": [{"spec_yaml": job("x")}]})
    assert anonymous.status_code == 401
    assert stored_names(admin) == []
    answer = alice.submit_batch([job("mine", project="vision"), job("more", project="vision")])
    assert {item.workload.project for item in answer.items} == {"vision"}
    assert {item.workload.user for item in answer.items} == {"alice"}


def test_idempotency_keys_make_a_retried_batch_return_the_same_workloads(admin: Client, server: TestServer) -> None:
    specs, keys = [job("a"), job("b")], ["run-1-a", "run-1-b"]
    first = admin.submit_batch(specs, idempotency_keys=keys)
    items = [{"spec_yaml": s, "idempotency_key": k} for s, k in zip(specs, keys, strict=True)]
    again = httpx.post(f"{server.url}/api/v1/workloads/batch", json={"items": items},
                       headers={"Authorization": f"Bearer {server.admin_token}"}, timeout=30)
    assert again.status_code == 200  # nothing new: every item replayed
    assert [i["workload"]["id"] for i in again.json()["items"]] == [i.workload.id for i in first.items]
    assert not any(i["created"] for i in again.json()["items"])
    # a known key with another spec refuses the batch, and the new item before it is not stored either
    with pytest.raises(ConflictError, match=r"items\[1\]: idempotency key 'run-1-a'"):
        admin.submit_batch([job("c"), job("changed")], idempotency_keys=["run-1-c", "run-1-a"])
    # the same key twice in one batch with the same spec is one workload
    twice = admin.submit_batch([job("d"), job("d")], idempotency_keys=["run-1-d", "run-1-d"])
    assert twice.items[0].workload.id == twice.items[1].workload.id
    assert [i.created for i in twice.items] == [True, False]
    assert stored_names(admin) == ["a", "b", "d"]
    with pytest.raises(ValueError, match="one key"):
        admin.submit_batch(specs, idempotency_keys=["only-one"])


def test_submit_answers_are_their_documented_models_as_json(server_factory: ServerFactory,
                                                            fake: FakeExecutor) -> None:
    """Single and batch submits send their answer as built (no second check by the framework): the status
    (201 created, 200 replayed), the JSON type and the body are what the OpenAPI document promises."""
    server = server_factory(executor=fake, workers=False, gpus="4xA100-80GB")  # nothing moves the workloads
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    with httpx.Client(base_url=f"{server.url}/api/v1", headers=headers, timeout=30) as http:
        single = [http.post("/workloads", json={"spec_yaml": job("one"), "idempotency_key": "k1"}) for _ in range(2)]
        items = {"items": [{"spec_yaml": job("two"), "idempotency_key": "k2"}]}
        batch = [http.post("/workloads/batch", json=items) for _ in range(2)]
        shown = http.get(f"/workloads/{single[0].json()['workload']['id']}", params={"tasks": 0}).json()
        documented = http.get(f"{server.url}/openapi.json").json()["paths"]
    assert [r.status_code for r in single + batch] == [201, 200, 201, 200]
    assert all(r.headers["content-type"] == "application/json" for r in single + batch)
    first = schemas.WorkloadSubmitted.model_validate(single[0].json())
    assert first.created and single[0].json()["workload"] == shown
    assert single[1].json()["workload"]["id"] == shown["id"] and not single[1].json()["created"]
    assert schemas.BatchSubmitted.model_validate(batch[1].json()).items[0].workload.name == "two"
    for path, model in (("/api/v1/workloads", "WorkloadSubmitted"), ("/api/v1/workloads/batch", "BatchSubmitted")):
        answer = documented[path]["post"]["responses"]["201"]["content"]["application/json"]["schema"]
        assert answer == {"$ref": f"#/components/schemas/{model}"}
