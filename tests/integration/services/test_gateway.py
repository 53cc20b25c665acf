"""Services end to end: a real server with the local executor runs the tiny LLM server as service replicas
(real processes) behind the gateway. The official openai client streams byte for byte what the replica
sends; a held request wakes a service from zero; a service that cannot get a GPU answers 503 with the reason;
a load ramp scales 1 -> 3 and back to 0 without a failed request, and the GPU share is free again at 0; a
replica preempted in the middle of a long stream finishes it before the preemptor starts."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from tests.support import tiny_llm
from tests.support.processes import cli_env, run_cli, run_json
from tests.support.servers import TestServer, server_settings, start_server, wait_until

from gpupool.client.http import Client
from gpupool.client.services import (
    create_service_token,
    list_services,
    revoke_service_token,
    rollback_service,
    update_service,
)
from gpupool.domain.errors import NotFoundError, ValidationError
from gpupool.executors.local import LocalExecutor

# Starting a replica (Python, torch and transformers imports) takes ~4 s on an idle core, several times that
# on a shared machine: the waits below allow for a busy one.
START_S = 180


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServer]:
    """One server for the module: SQLite, one simulated A100 (shared mode), the local executor."""
    tmp = tmp_path_factory.mktemp("gateway")
    (tmp / "replica-home").mkdir()
    executor = LocalExecutor(tmp / "executor", base_env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                                         "HOME": str(tmp / "replica-home"), "LANG": "C.UTF-8"})
    running = start_server(server_settings(tmp / "home", f"sqlite:///{tmp / 'gpupool.db'}", gpus="1xA100-80GB",
                                           node_cpus=8, node_memory="32GiB"), executor)
    yield running
    with running.client() as admin:
        for w in admin.list_workloads(limit=1000).items:
            if w.status in ("pending", "scheduled", "starting", "running"):
                admin.cancel(w.id)
        wait_until(lambda: not any(w.status in ("scheduled", "starting", "running")
                                   for w in admin.list_workloads(limit=1000).items), 60, 0.2, "replicas stopped")
    running.stop()


@pytest.fixture(scope="module")
def admin(server: TestServer) -> Iterator[Client]:
    with server.client() as client:
        yield client


def service(model_dir: Path, name: str, model: str, **fields: Any) -> dict[str, Any]:
    return {"kind": "service", "name": name, "command": tiny_llm.server_command(model_dir, model),
            "models": [model], "resources": {"cpu": 0.5, "memory": "1GiB"}} | fields


def children(admin: Client, service_id: int) -> list[Any]:
    return [w for w in admin.list_workloads(limit=1000).items if w.parent_id == service_id]


def auth(server: TestServer, token: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token or server.admin_token}"}


def events(admin: Client, workload_id: int) -> list[str]:
    return [e.reason for e in admin.get_workload(workload_id).events]


def test_openai_client_streams_byte_identical_to_the_replica(server: TestServer, admin: Client,
                                                             model_dir: Path) -> None:
    sid = admin.submit(service(model_dir, "chat", "chat-model", replicas={"min": 1, "max": 1},
                               scaling={"cold_start_timeout": START_S})).workload.id
    gateway = openai.OpenAI(base_url=server.url + "/v1", api_key=server.admin_token, timeout=START_S)
    request: dict[str, Any] = {"model": "chat-model", "messages": [{"role": "user", "content": "hello"}],
                               "max_tokens": 8, "stream": True}
    with gateway.chat.completions.with_streaming_response.create(**request) as response:  # held until ready
        through = b"".join(response.iter_bytes())
    child = children(admin, sid)[0]
    endpoint = admin.get_workload(child.id).replica_list[0].endpoints[0]
    direct = openai.OpenAI(base_url=f"http://{endpoint.host}:{endpoint.node_port}/v1", api_key="unused")
    with direct.chat.completions.with_streaming_response.create(**request) as response:
        assert b"".join(response.iter_bytes()) == through
    assert through.endswith(b"data: [DONE]\n\n") and through.count(b"data: ") == 8 + 3  # role, 8 tokens, end, DONE
    text = "".join(c.choices[0].delta.content or "" for c in gateway.chat.completions.create(**request))
    assert text and [m.id for m in gateway.models.list().data] == ["chat-model"]
    raw = httpx.get(f"{server.url}/services/chat/v1/models", headers=auth(server)).json()
    assert raw["data"][0]["id"] == "chat-model"  # /services/<name>/ reaches the replica as is
    metrics = admin.prometheus_metrics()
    assert any(line.startswith('gpupool_service_requests_total{code="200",project_id="')
               and line.split("} ")[0].endswith(',service="chat"') for line in metrics.splitlines())
    assert "gpupool_service_time_to_first_byte_seconds_bucket" in metrics
    per_minute = server.app.state.gateway.traffic.series(server.services.db, sid, 0.0)  # the console's series
    requests, errors, chunks = (sum(counts[i] for counts in per_minute.values()) for i in range(3))
    assert requests == 3 and errors == 0 and chunks >= 2  # two streams and /services/chat (the gateway lists models)


def test_gateway_auth_members_viewers_and_strangers(server: TestServer, admin: Client) -> None:
    admin.create_project("other")
    stranger = admin.create_user("stranger", project="other", role="member").token
    viewer = admin.create_user("watcher", project="default", role="viewer").token
    body = {"model": "chat-model", "prompt": "x", "max_tokens": 1}
    assert httpx.post(f"{server.url}/v1/completions", json=body).status_code == 401
    assert httpx.get(f"{server.url}/v1/models").status_code == 401
    assert httpx.post(f"{server.url}/v1/completions", json=body, headers=auth(server, "wrong")).status_code == 401
    assert httpx.post(f"{server.url}/v1/completions", json=body, headers=auth(server, stranger)).status_code == 404
    assert httpx.get(f"{server.url}/v1/models", headers=auth(server, stranger)).json()["data"] == []
    assert httpx.get(f"{server.url}/services/chat/health", headers=auth(server, stranger)).status_code == 404
    seen = httpx.get(f"{server.url}/v1/models", headers=auth(server, viewer)).json()["data"]
    assert [m["id"] for m in seen] == ["chat-model"]
    refused = httpx.post(f"{server.url}/v1/completions", json=body, headers=auth(server, viewer))
    assert refused.status_code == 403 and "viewers" in refused.json()["error"]["message"]
    member = httpx.post(f"{server.url}/v1/completions", json=body, headers=auth(server), timeout=60)
    assert member.status_code == 200 and member.json()["choices"][0]["text"]
    assert httpx.post(f"{server.url}/v1/completions", json={"prompt": "x"}, headers=auth(server)).status_code == 400


def test_service_tokens_call_their_projects_gateway_and_nothing_else(server: TestServer, admin: Client,
                                                                     model_dir: Path, tmp_path: Path) -> None:
    admin.create_project("apps")
    lead = admin.create_user("apps-lead", project="apps", role="admin").token
    member = admin.create_user("apps-member", project="apps", role="member").token  # not its admin
    admin.submit(service(model_dir, "apps-chat", "apps-model", project="apps", replicas={"min": 0, "max": 1}))
    env = cli_env(tmp_path, server.settings.port, GPUPOOL_TOKEN=server.admin_token)
    token = run_cli(["service", "tokens", "create", "chat-frontend", "--project", "default"], env).stdout.strip()
    assert token.startswith("gps_")
    body = {"model": "chat-model", "prompt": "x", "max_tokens": 2}
    called = httpx.post(f"{server.url}/v1/completions", json=body, headers=auth(server, token), timeout=START_S)
    assert called.status_code == 200 and called.json()["choices"][0]["text"]  # its project's service
    models = [m["id"] for m in httpx.get(f"{server.url}/v1/models", headers=auth(server, token)).json()["data"]]
    assert "chat-model" in models and "apps-model" not in models
    other = httpx.post(f"{server.url}/v1/completions", json=body | {"model": "apps-model"},
                       headers=auth(server, token))
    assert other.status_code == 404  # another project's service is not there for it
    assert httpx.get(f"{server.url}/services/apps-chat/health", headers=auth(server, token)).status_code == 404
    for method, path in (("GET", "/api/v1/workloads"), ("GET", "/api/v1/projects"), ("GET", "/metrics"),
                         ("POST", "/api/v1/workloads")):
        refused = httpx.request(method, server.url + path, headers=auth(server, token),
                                json={"spec": {"name": "x", "command": "true"}} if method == "POST" else None)
        assert refused.status_code == 401, (path, refused.text)
        assert "service token" in refused.text and "only the gateway" in refused.text, refused.text
    # a project admin manages its own project's service tokens only; a member cannot
    with Client(server.url, lead) as lead_client:
        mine = create_service_token(lead_client, "apps", "batch")
        with pytest.raises(NotFoundError, match="not found among your projects"):
            create_service_token(lead_client, "default", "sneaky")  # not in default at all
    refused = httpx.post(f"{server.url}/api/v1/projects/apps/service-tokens", json={"name": "n"},
                         headers=auth(server, member))
    assert refused.status_code == 403
    listed: Any = run_json(["service", "tokens", "ls", "--project", "apps"], env)
    assert [(t["name"], t["created_by"], t["revoked"]) for t in listed] == [("batch", "apps-lead", False)]
    revoked = revoke_service_token(admin, "apps", mine.info.id)
    assert revoked.revoked
    gone = httpx.get(f"{server.url}/v1/models", headers=auth(server, mine.token))
    assert gone.status_code == 401 and "revoked" in gone.text


def test_cli_lists_shows_scales_and_prints_logs(server: TestServer, admin: Client, tmp_path: Path) -> None:
    env = cli_env(tmp_path, server.settings.port, GPUPOOL_TOKEN=server.admin_token)
    listed: Any = run_json(["service", "ls"], env)
    chat = next(s for s in listed if s["name"] == "chat")
    assert (chat["state"], chat["models"], chat["ready"], chat["replicas"]) == ("serving", ["chat-model"], 1, 1)
    shown: Any = run_json(["service", "show", "chat"], env)
    assert shown["replica_list"][0]["ready"] and any("submitted" in e["reason"] for e in shown["events"])
    scaled: Any = run_json(["service", "scale", "chat", "--min", "0", "--max", "2"], env)
    assert (scaled["min_replicas"], scaled["max_replicas"]) == (0, 2)
    assert admin.get_workload(chat["id"]).spec["replicas"] == {"min": 0, "max": 2}
    refused = run_cli(["service", "scale", "chat", "--min", "3", "--max", "2"], env, check=False)
    assert refused.returncode != 0 and "larger than max" in refused.stdout + refused.stderr
    missing = run_cli(["service", "show", "nope"], env, check=False)
    assert missing.returncode != 0 and "not found" in missing.stdout + missing.stderr
    logs = run_cli(["service", "logs", "chat", "--tail", "50"], env)
    assert logs.returncode == 0  # the replica's output (its model loading), through the workload's logs


def test_rolling_update_and_rollback_under_load_fail_no_request(server: TestServer, admin: Client,
                                                                model_dir: Path) -> None:
    sid = next(s.id for s in list_services(admin) if s.name == "chat")
    results: list[int] = []
    stop = threading.Event()

    def client_loop() -> None:
        while not stop.is_set():
            try:
                r = httpx.post(f"{server.url}/v1/completions", headers=auth(server), timeout=START_S,
                               json={"model": "chat-model", "prompt": "x", "max_tokens": 4})
                results.append(r.status_code)
            except httpx.HTTPError:
                results.append(0)

    def serving(revision: int) -> bool:
        kids = children(admin, sid)
        return [c.name for c in kids if c.status in ("pending", "scheduled", "starting", "running")] == \
            [f"chat-r{revision}"] and len(results) > 0

    new_spec = service(model_dir, "chat", "chat-model", env={"REVISION": "2"}, replicas={"min": 1, "max": 1},
                       scaling={"cold_start_timeout": START_S})
    threads = [threading.Thread(target=client_loop) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        updated = update_service(admin, "chat", yaml.safe_dump(new_spec))
        assert updated.events[-1].reason.startswith("revision 2: updated by")
        wait_until(lambda: serving(2), START_S, 0.2, "revision 2 serving alone")
        during_update = len(results)
        rolled = rollback_service(admin, "chat")
        assert rolled.events[-1].reason.startswith("revision 3: rolled back") and "REVISION" not in str(rolled.spec)
        wait_until(lambda: serving(3), START_S, 0.2, "revision 3 serving alone")
    finally:
        stop.set()
        for t in threads:
            t.join(START_S)
    assert during_update > 0 and len(results) > during_update
    assert set(results) == {200}, f"failed requests: {[r for r in results if r != 200]}"
    reasons = events(admin, sid)
    assert any("old replicas drain" in r for r in reasons)
    with pytest.raises(ValidationError, match="keeps its name"):
        update_service(admin, "chat", yaml.safe_dump(new_spec | {"name": "other"}))


def test_a_held_request_wakes_the_service_from_zero(server: TestServer, admin: Client, model_dir: Path) -> None:
    sid = admin.submit(service(model_dir, "cold", "cold-model", env={"STARTUP_DELAY_S": "3"},
                               replicas={"min": 0, "max": 1},
                               scaling={"cold_start_timeout": START_S, "scale_down_delay": 1})).workload.id
    wait_until(lambda: any(m["id"] == "cold-model" for m in httpx.get(
        f"{server.url}/v1/models", headers=auth(server)).json()["data"]), 10, 0.05, "service published")
    assert children(admin, sid) == []  # min 0: nothing runs before the first request
    assert admin.get_workload(sid).status == "pending"
    sent = time.time()
    with httpx.stream("POST", f"{server.url}/v1/completions", headers=auth(server), timeout=START_S,
                      json={"model": "cold-model", "prompt": "x", "max_tokens": 4, "stream": True}) as response:
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data: {"))
        first_at = time.time()
        rest = [line for line in lines if line]
    assert response.status_code == 200 and first and rest[-1] == "data: [DONE]"
    child = children(admin, sid)[0]
    ready_at = next(e.at for e in admin.get_workload(child.id).events if "is ready on port" in e.reason)
    assert first_at - sent >= 3  # the replica's cold start was held through
    history = [(round(e.at - sent, 2), e.reason) for w in (sid, child.id) for e in admin.get_workload(w).events]
    assert first_at - ready_at <= 0.5, f"first token {first_at - sent:.2f} s after sending: {history}"
    moves = [(e.from_status, e.to_status, e.reason) for e in admin.get_workload(sid).events if e.to_status]
    assert ("scheduled", "running", "1 replica(s) serving") in moves, moves  # the service ran while it served
    # idle for scale_down_delay: back to zero, the replica stopped, the service pending again
    wait_until(lambda: admin.get_workload(child.id).status == "cancelled", 30, 0.1, "scaled to zero")
    assert any(r.startswith("scale to zero") for r in events(admin, sid))
    final = wait_until(lambda: (w := admin.get_workload(sid)).status == "pending" and w, 10, 0.1, "service pending")
    assert final.message == "scaled to zero: the next request starts a replica"


def test_a_service_waiting_for_a_gpu_answers_503_with_the_reason(server: TestServer, admin: Client,
                                                                 model_dir: Path) -> None:
    hog = admin.submit({"name": "hog", "command": "sleep 600", "resources": {"cpu": 0.1, "memory": "64MiB",
                                                                             "gpu": 1}}).workload.id
    admin.wait(hog, ["running"], timeout_s=60)
    sid = admin.submit(service(model_dir, "gpu-wait", "gpu-model", replicas={"min": 0, "max": 1},
                               resources={"cpu": 0.5, "memory": "1GiB", "gpu": {"share": 0.5}},
                               scaling={"cold_start_timeout": 5})).workload.id
    wait_until(lambda: httpx.get(f"{server.url}/v1/models", headers=auth(server)).json()["data"], 10, 0.05)
    started = time.monotonic()
    answer = httpx.post(f"{server.url}/v1/completions", headers=auth(server), timeout=30,
                        json={"model": "gpu-model", "prompt": "x", "max_tokens": 1})
    assert 5 <= time.monotonic() - started < 15
    message = answer.json()["error"]["message"]
    assert answer.status_code == 503 and "cold_start_timeout" in message, message
    assert "is pending" in message and "gpu" in message.lower(), (message, events(admin, sid))  # the scheduler's
    # reason: no GPU capacity
    admin.cancel(sid)  # the service ends: its pending replica is stopped with it
    wait_until(lambda: all(c.status == "cancelled" for c in children(admin, sid)), 10, 0.1, "replica cancelled")
    admin.cancel(hog)


def test_load_ramp_scales_up_and_back_to_zero_without_a_failed_request(server: TestServer, admin: Client,
                                                                      model_dir: Path) -> None:
    sid = admin.submit(service(model_dir, "ramp", "ramp-model", env={"TOKEN_DELAY_MS": "50"},
                               replicas={"min": 0, "max": 3},
                               resources={"cpu": 0.5, "memory": "1GiB", "gpu": {"share": 0.25}},
                               scaling={"target_inflight": 2, "scale_down_delay": 2,
                                        "cold_start_timeout": START_S})).workload.id
    wait_until(lambda: any(m["id"] == "ramp-model" for m in httpx.get(
        f"{server.url}/v1/models", headers=auth(server)).json()["data"]), 10, 0.05, "service published")
    results: list[int] = []
    stop = threading.Event()

    def client_loop() -> None:
        while not stop.is_set():
            try:
                r = httpx.post(f"{server.url}/v1/completions", headers=auth(server), timeout=START_S,
                               json={"model": "ramp-model", "prompt": "x", "max_tokens": 20})  # 20 x 50 ms = 1 s
                results.append(r.status_code)
            except httpx.HTTPError:
                results.append(0)

    threads = [threading.Thread(target=client_loop) for _ in range(6)]  # 6 in flight / target 2 = 3 replicas
    for t in threads:
        t.start()
    try:
        wait_until(lambda: sum(c.status == "running" for c in children(admin, sid)) == 3, START_S, 0.5,
                   "three replicas running")
        time.sleep(2)  # requests spread over the three
    finally:
        stop.set()
        for t in threads:
            t.join(START_S)
    assert results and set(results) == {200}, f"failed requests: {[r for r in results if r != 200]}"
    wait_until(lambda: not any(c.status in ("pending", "scheduled", "starting", "running")
                               for c in children(admin, sid)), 60, 0.2, "scaled to zero")
    reasons = events(admin, sid)
    assert any(r.startswith("scale up") for r in reasons) and any(r.startswith("scale to zero") for r in reasons)
    job = admin.submit({"name": "after", "command": "sleep 30", "resources": {"cpu": 0.1, "memory": "64MiB",
                                                                               "gpu": 1}}).workload.id
    admin.wait(job, ["running"], timeout_s=30)  # the whole GPU is free again
    admin.cancel(job)


def test_a_preempted_replica_finishes_its_stream_before_the_preemptor_starts(server: TestServer, admin: Client,
                                                                             model_dir: Path) -> None:
    sid = admin.submit(service(model_dir, "victim", "victim-model", env={"TOKEN_DELAY_MS": "100"}, priority="low",
                               replicas={"min": 1, "max": 1}, resources={"cpu": 0.5, "memory": "1GiB", "gpu": 1},
                               scaling={"cold_start_timeout": START_S})).workload.id
    wait_until(lambda: admin.get_workload(sid).status == "running", START_S, 0.2, "the service serving")
    (replica,) = [c for c in children(admin, sid) if c.status == "running"]
    lines: list[str] = []
    streaming = threading.Event()
    outcome: dict[str, Any] = {}

    def long_stream() -> None:  # 80 tokens x 100 ms: about 8 s of streaming
        try:
            with httpx.stream("POST", f"{server.url}/v1/completions", headers=auth(server), timeout=START_S,
                              json={"model": "victim-model", "prompt": "x", "max_tokens": 80,
                                    "stream": True}) as response:
                for line in response.iter_lines():
                    lines.append(line)
                    streaming.set()
                outcome["status"] = response.status_code
        except httpx.HTTPError as exc:
            outcome["error"] = repr(exc)
        outcome["ended_at"] = time.time()

    reader = threading.Thread(target=long_stream)
    reader.start()
    try:
        assert streaming.wait(START_S), "the stream did not begin"
        urgent = admin.submit({"name": "urgent", "command": "sleep 60", "priority": "high",
                               "resources": {"cpu": 0.1, "memory": "64MiB", "gpu": 1}}).workload.id
        wait_until(lambda: admin.get_workload(replica.id).status == "preempted", 30, 0.05, "replica preempted")
        assert "ended_at" not in outcome  # preempted in the middle of the stream
    finally:
        reader.join(START_S)
    assert outcome.get("status") == 200 and "error" not in outcome, outcome
    chunks = [line for line in lines if line.startswith("data: {")]
    # all 80 tokens and the finish chunk, then the end: the preemption cut nothing
    assert len(chunks) == 81 and [line for line in lines if line][-1] == "data: [DONE]"
    job = admin.wait(urgent, ["running"], timeout_s=60)
    assert job.started_at is not None and job.started_at >= outcome["ended_at"] - 0.5  # only after the stream
    assert any(r.startswith("stopping: drained after preemption") for r in events(admin, replica.id))
    admin.cancel(urgent)
    admin.cancel(sid)
    wait_until(lambda: all(c.status == "cancelled" for c in children(admin, sid)), 30, 0.1, "replica cancelled")
