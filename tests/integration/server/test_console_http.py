"""The console's security and the dry run over plain HTTP (no browser): a real server with two declared
A100s and a fake executor whose replicas run until stopped. Unauthenticated pages redirect to sign-in;
forms without the session's CSRF token change nothing; a viewer sees but cannot act; a member cannot
open another project's workload; one-time links work once; the dry run says now / waits / never."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from tests.support.servers import TestServer, server_settings, start_server, wait_until
from typer.testing import CliRunner

from gpupool.cli.main import app
from gpupool.client.http import Client
from gpupool.domain.errors import AuthenticationError, NotFoundError, PermissionDeniedError, ValidationError
from gpupool.executors.fake import RUN_FOREVER, FakeExecutor

GPU_JOB = "name: {name}\nproject: {project}\ncommand: sleep 600\nresources: {{cpu: 0.5, memory: 256MiB, gpu: {gpu}}}\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServer]:
    tmp = tmp_path_factory.mktemp("console-http")
    running = start_server(server_settings(tmp / "home", f"sqlite:///{tmp / 'gpupool.db'}", gpus="2xA100-80GB",
                                           gpu_mode="exclusive"), FakeExecutor(default=RUN_FOREVER))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def people(server: TestServer) -> dict[str, str]:
    """Tokens: vic, a viewer of project lab; max, a member of project other."""
    with server.client() as admin:
        admin.create_project("lab")
        admin.create_project("other")
        return {"vic": admin.create_user("vic", project="lab", role="viewer").token,
                "max": admin.create_user("max", project="other").token}


def browser_for(server: TestServer, token: str) -> httpx.Client:
    """An HTTP client signed in to the console through its sign-in form."""
    client = httpx.Client(base_url=server.url, follow_redirects=False, timeout=30)
    answer = client.post("/signin", data={"token": token, "next": "/workloads"})
    assert answer.status_code == 303 and answer.headers["location"] == "/workloads"
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    return client


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def test_pages_need_a_session_and_a_bad_token_is_refused(server: TestServer) -> None:
    for path in ("/", "/workloads", "/workloads/1", "/new", "/nodes", "/queues", "/usage"):
        answer = httpx.get(server.url + path, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/signin?next=")
    refused = httpx.post(server.url + "/signin", data={"token": "gpp_wrong"})
    assert refused.status_code == 401 and "not valid" in refused.text and "set-cookie" not in refused.headers
    stale = httpx.get(server.url + "/", cookies={"gpupool_session": "gpp_wrong"}, follow_redirects=False)
    assert stale.status_code == 303  # an invalid cookie is treated as no session
    assert httpx.get(server.url + "/signin?next=//evil.example").text.count('value="/"') == 1  # no open redirect


def test_forms_without_the_csrf_token_change_nothing(server: TestServer) -> None:
    with server.client() as admin:
        wid = admin.submit(GPU_JOB.format(name="target", project="default", gpu=0)).workload.id
    page = browser_for(server, server.admin_token)
    csrf = csrf_of(page.get(f"/workloads/{wid}").text)
    for form in ({}, {"csrf_token": "f" * 64}):
        answer = page.post(f"/workloads/{wid}/cancel", data=form)
        assert answer.status_code == 403 and "CSRF" in answer.text
    with server.client() as admin:
        assert admin.get_workload(wid).status != "cancelled"
    assert page.post(f"/workloads/{wid}/cancel", headers={"x-csrf-token": csrf}).status_code == 303
    with server.client() as admin:
        assert admin.get_workload(wid).status == "cancelled"
    # the API does not take the cookie: it still needs a bearer token
    assert page.get("/api/v1/workloads").status_code == 401


def test_a_viewer_sees_but_cannot_act_and_a_member_sees_only_their_projects(
        server: TestServer, people: dict[str, str]) -> None:
    with server.client() as admin:
        lab = admin.submit(GPU_JOB.format(name="lab-job", project="lab", gpu=0)).workload.id
    viewer = browser_for(server, people["vic"])
    detail = viewer.get(f"/workloads/{lab}")
    assert detail.status_code == 200 and "lab-job" in detail.text
    refused = viewer.post(f"/workloads/{lab}/cancel", data={"csrf_token": csrf_of(detail.text)})
    assert refused.status_code == 403 and "viewers cannot cancel" in refused.text
    queues = viewer.get("/queues")
    answer = viewer.post("/queues/lab", data={"csrf_token": csrf_of(queues.text), "limit_gpu": "2"})
    assert answer.status_code == 403 and "administrators" in answer.text
    member = browser_for(server, people["max"])
    assert member.get(f"/workloads/{lab}").status_code == 404
    assert "lab-job" not in member.get("/workloads").text
    with Client(server.url, people["max"]) as max_api, pytest.raises(NotFoundError):
        max_api.get_workload(lab)


def test_the_dry_run_says_now_where_waits_why_and_never(server: TestServer, people: dict[str, str]) -> None:
    with server.client() as admin:
        now = admin.dry_run(GPU_JOB.format(name="probe", project="default", gpu=2))
        assert now.verdict == "now" and now.queue == "default"
        assert [(p.node, [g["index"] for g in p.gpus]) for p in now.placements] == [("node", [0, 1])]
        never = admin.dry_run(GPU_JOB.format(name="probe", project="default", gpu=3))
        assert never.verdict == "never" and "largest node has 2" in (never.reason or "")
        held = admin.submit(GPU_JOB.format(name="holder", project="default", gpu=2)).workload.id
        wait_until(lambda: admin.get_workload(held).status == "running", 20, what="holder running")
        waits = admin.dry_run(GPU_JOB.format(name="probe", project="default", gpu=1))
        assert waits.verdict == "waits" and waits.position == 1 and "GPU" in (waits.reason or "")
        with pytest.raises(ValidationError, match="GPUs"):
            admin.dry_run("name: probe\ncommand: x\nresources: {gpu: banana}\n")
        assert admin.list_workloads(name="probe").total == 0  # nothing was stored
        admin.cancel(held)
    with Client(server.url, people["vic"]) as viewer, pytest.raises(PermissionDeniedError):
        viewer.dry_run(GPU_JOB.format(name="probe", project="lab", gpu=1))
    page = browser_for(server, server.admin_token)
    csrf = csrf_of(page.get("/new").text)
    checked = page.post("/new/check", data={"csrf_token": csrf, "mode": "form", "name": "probe",
                                            "project": "default", "command": "true", "gpu": "1"})
    assert checked.status_code == 200 and checked.json()["verdict"] in ("now", "waits")
    bad = page.post("/new/check", data={"csrf_token": csrf, "mode": "yaml", "spec_yaml": "name: [1"})
    assert bad.status_code == 422 and bad.json()["field"] == "spec_yaml"


def test_one_time_links_sign_in_once(server: TestServer) -> None:
    with server.client() as admin:
        link = admin.console_link()
    assert link.path.startswith("/signin/link?code=")
    first = httpx.get(server.url + link.path, follow_redirects=False)
    assert first.status_code == 303 and "gpupool_session=" in first.headers["set-cookie"]
    again = httpx.get(server.url + link.path, follow_redirects=False)
    assert again.status_code == 401 and "used or expired" in again.text
    with Client(server.url, "gpp_nobody") as stranger, pytest.raises(AuthenticationError):
        stranger.console_link()
    printed = CliRunner().invoke(app, ["console"], env={"GPUPOOL_URL": server.url, "GPUPOOL_TOKEN": server.admin_token})
    assert printed.exit_code == 0, printed.output
    url = printed.stdout.strip()
    assert url.startswith(server.url + "/signin/link?code=")
    assert httpx.get(url, follow_redirects=False).status_code == 303


def test_admin_page_projects_members_and_tokens(server: TestServer, people: dict[str, str]) -> None:
    page = browser_for(server, server.admin_token)
    csrf = csrf_of(page.get("/admin").text)
    assert page.post("/admin/projects", data={"csrf_token": csrf, "name": "audio"}).status_code == 303
    bad = page.post("/admin/projects", data={"csrf_token": csrf, "name": "Not A Name"})
    assert bad.status_code == 422 and "name" in bad.text
    answer = page.post("/admin/projects/audio/members", data={"csrf_token": csrf, "user": "max", "role": "viewer"})
    assert answer.status_code == 303
    with server.client() as admin:
        audio = next(p for p in admin.projects() if p.name == "audio")
        assert [(m.user, m.role) for m in audio.members if m.user == "max"] == [("max", "viewer")]
    created = page.post("/admin/tokens", data={"csrf_token": csrf, "name": "laptop"})
    token = re.search(r'<code id="new-token">([^<]+)</code>', created.text)
    assert created.status_code == 200 and token
    with Client(server.url, token.group(1)) as fresh:
        info = next(t for t in fresh.tokens() if t.name == "laptop")
        assert fresh.whoami().name == "admin"
    assert page.post(f"/admin/tokens/{info.id}/revoke", data={"csrf_token": csrf}).status_code == 303
    with Client(server.url, token.group(1)) as revoked, pytest.raises(AuthenticationError):
        revoked.whoami()
    member = browser_for(server, people["max"])
    mine = csrf_of(member.get("/admin").text)
    refused = member.post("/admin/projects", data={"csrf_token": mine, "name": "sneaky"})
    assert refused.status_code == 403 and "administrators" in refused.text
    refused = member.post("/admin/projects/lab/members", data={"csrf_token": mine, "user": "max", "role": "admin"})
    assert refused.status_code in (403, 404)


def test_queue_form_validation_and_usage_csv(server: TestServer) -> None:
    page = browser_for(server, server.admin_token)
    csrf = csrf_of(page.get("/queues").text)
    form = {"csrf_token": csrf, "lend_present": "1", "lend": "on", "guaranteed_gpu": "1", "guaranteed_cpu": "2",
            "guaranteed_memory": "8 GiB", "limit_gpu": "2", "limit_cpu": "", "limit_memory": "", "weight": "2"}
    assert page.post("/queues/default", data=form).status_code == 303
    with server.client() as admin:
        queue = next(q for q in admin.queues() if q.name == "default")
    assert (queue.guaranteed.gpu_milli, queue.guaranteed.cpu_milli, queue.guaranteed.memory_mib) == (1000, 2000, 8192)
    assert (queue.limit.gpu_milli, queue.limit.cpu_milli, queue.weight, queue.lend) == (2000, None, 2.0, True)
    bad = page.post("/queues/default", data={**form, "guaranteed_gpu": "3"})  # a guarantee above the limit
    assert bad.status_code == 422 and "limit" in bad.text
    bad = page.post("/queues/default", data={**form, "guaranteed_memory": "lots"})
    assert bad.status_code == 422 and "memory" in bad.text
    with server.client() as admin:
        assert next(q for q in admin.queues() if q.name == "default").guaranteed.gpu_milli == 1000  # unchanged
        admin.update_queue("default", guaranteed={"gpu": "-", "cpu": "-", "memory": "-"}, limit={}, weight=1.0)
    csv_text = page.get("/usage?by=user&period=week&since=7d&format=csv")
    assert csv_text.status_code == 200 and csv_text.headers["content-type"].startswith("text/csv")
    assert csv_text.text.splitlines()[0].startswith("period_start,period,group,allocated_gpu_h")
    assert page.get("/usage?since=yesterday").status_code == 422


def test_a_bad_parameter_on_a_page_answers_a_page_and_the_api_keeps_json(server: TestServer) -> None:
    page = browser_for(server, server.admin_token)
    for path, field in (("/workloads?before=abc", "before"), ("/workloads/0", "workload_id"),
                        ("/notebooks?ended=<script>x</script>", "ended"), ("/sweeps?before=-1", "before")):
        answer = page.get(path)
        assert answer.status_code == 422 and answer.headers["content-type"].startswith("text/html"), path
        assert f"{field}: " in answer.text and "correct or remove it in the address" in answer.text, path
        back = path.split("?")[0]
        assert f'<a href="{back}" id="back">' in answer.text and "<script>x" not in answer.text, path
        assert answer.headers["content-security-policy"].startswith("default-src 'self'")
    unsigned = httpx.get(server.url + "/workloads?before=abc", follow_redirects=False)
    assert unsigned.status_code == 303 and unsigned.headers["location"].startswith("/signin?next=")
    too_long = httpx.get(server.url + "/signin?next=/" + "x" * 3000, follow_redirects=False)
    assert too_long.status_code == 422 and "next: " in too_long.text  # no redirect loop through sign-in
    api = httpx.get(server.url + "/api/v1/workloads?before_id=abc",
                    headers={"authorization": f"Bearer {server.admin_token}"})
    assert api.status_code == 422 and api.json()["error"]["type"] == "validation_error"
    assert api.json()["error"]["field"] == "before_id"
