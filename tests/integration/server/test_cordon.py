"""Cordon, uncordon and drain over HTTP: a real server with one simulated A100 and a fake executor whose
replicas run until stopped. A cordoned node takes no new work (the pending reason says so) and stays cordoned
through node registration; draining preempts what runs there; only administrators may; the console's
buttons do the same."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from tests.support.servers import TestServer, server_settings, start_server, wait_until

from gpupool.client.http import Client

JOB = "name: {name}\ncommand: sleep 600\nresources: {{cpu: 0.5, memory: 256MiB, gpu: 1}}\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServer]:
    from gpupool.executors.fake import RUN_FOREVER, FakeExecutor  # noqa: PLC0415

    tmp = tmp_path_factory.mktemp("cordon")
    running = start_server(server_settings(tmp / "home", f"sqlite:///{tmp / 'gpupool.db'}", gpus="1xA100-80GB",
                                           gpu_mode="exclusive"), FakeExecutor(default=RUN_FOREVER))
    yield running
    running.stop()


def call(server: TestServer, action: str, token: str | None = None, **body: str) -> httpx.Response:
    headers = {"authorization": f"Bearer {token or server.admin_token}"}
    return httpx.post(f"{server.url}/api/v1/nodes/node/{action}", json=body or None, headers=headers, timeout=30)


def status(client: Client, wid: int) -> str:
    return client.get_workload(wid).status


def test_cordon_holds_new_work_survives_registration_and_uncordon_releases_it(server: TestServer) -> None:
    answer = call(server, "cordon", reason="fan replacement")
    assert answer.status_code == 200 and answer.json() == {"node": "node", "cordoned": True, "changed": True,
                                                           "preempted": []}
    assert call(server, "cordon").json()["changed"] is False  # idempotent
    with server.client() as admin:
        wid = admin.submit(JOB.format(name="waits")).workload.id
        wait_until(lambda: "schedulable" in (admin.get_workload(wid).pending_reason or ""), 20,
                   what="pending reason naming the cordon")
        assert server.services.node_sync is not None
        server.services.node_sync.step()  # registration rewrites the node row; the cordon stays
        assert not admin.node("node").schedulable
        assert call(server, "uncordon").json()["changed"] is True
        wait_until(lambda: status(admin, wid) == "running", 20, what="job running after uncordon")
        admin.cancel(wid)


def test_drain_preempts_running_work_which_runs_again_after_uncordon(server: TestServer) -> None:
    with server.client() as admin:
        wid = admin.submit(JOB.format(name="moves")).workload.id
        wait_until(lambda: status(admin, wid) == "running", 20, what="job running")
        drained = call(server, "drain")
        assert drained.status_code == 200 and drained.json()["preempted"] == [wid]
        wait_until(lambda: status(admin, wid) == "pending", 20, what="drained job back in the queue")
        assert admin.get_workload(wid).preemptions == 1
        call(server, "uncordon")
        wait_until(lambda: status(admin, wid) == "running", 20, what="job running again")
        admin.cancel(wid)


def test_only_administrators_may_and_unknown_nodes_are_named(server: TestServer) -> None:
    with server.client() as admin:
        token = admin.create_user("carl").token
    assert call(server, "cordon", token).status_code == 403
    assert httpx.post(f"{server.url}/api/v1/nodes/node/cordon").status_code == 401
    missing = httpx.post(f"{server.url}/api/v1/nodes/ghost/drain", headers={"authorization":
                                                                             f"Bearer {server.admin_token}"})
    assert missing.status_code == 404 and "ghost" in missing.json()["error"]["message"]


def test_console_buttons_cordon_and_uncordon(server: TestServer) -> None:
    page = httpx.Client(base_url=server.url, timeout=30)
    page.post("/signin", data={"token": server.admin_token})
    html = page.get("/nodes").text
    csrf = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', html)
    assert csrf and "Cordon node" in html
    assert page.post("/nodes/node/cordon", data={"csrf_token": csrf.group(1), "reason": "<b>bios</b>"},
                     follow_redirects=False).status_code == 303
    shown = page.get("/nodes").text
    assert "Cordoned by admin" in shown and "&lt;b&gt;bios&lt;/b&gt;" in shown and "Uncordon node" in shown
    assert page.post("/nodes/node/uncordon", data={}).status_code == 403  # no CSRF token: nothing changes
    with server.client() as admin:
        assert not admin.node("node").schedulable
    page.post("/nodes/node/uncordon", data={"csrf_token": csrf.group(1)})
    with server.client() as admin:
        assert admin.node("node").schedulable
