"""The console's pages of notebooks, services, pipeline runs and sweeps, and the workload list's filters, over
plain HTTP against a real server (SQLite, two declared A100s, a fake executor whose replicas run until the
test ends them). Each page shows what the API shows; actions go through the same checks (a viewer sees but
cannot act, a member of another project gets 404, a form without the session's CSRF token changes nothing);
names and values from specs are escaped."""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest
from tests.integration.server.test_console_http import browser_for, csrf_of
from tests.support.databases import temporary_postgres_database
from tests.support.servers import TestServer, server_settings, start_server, wait_until

from gpupool.client.http import Client
from gpupool.client.pipelines import PipelineClient
from gpupool.domain.errors import PermissionDeniedError
from gpupool.executors.fake import RUN_FOREVER, FakeExecutor
from gpupool.server.services import sweeps
from gpupool.store.repos import accounts as accounts_repo
from gpupool.store.repos import workloads as repo

INJECTED = "<script>window.injected=1</script>"
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServer]:
    """One server per database for the module (two A100s in exclusive mode, 16 CPUs)."""
    tmp = tmp_path_factory.mktemp("console-kinds")
    with ExitStack() as stack:
        url = (
            f"sqlite:///{tmp / 'gpupool.db'}"
            if request.param == "sqlite"
            else stack.enter_context(temporary_postgres_database())
        )
        settings = server_settings(
            tmp / "home", url, gpus="2xA100-80GB", gpu_mode="exclusive", node_cpus=16, node_memory="64GiB"
        )
        running = start_server(settings, FakeExecutor(default=RUN_FOREVER))
        yield running
        running.stop()


@pytest.fixture(scope="module")
def executor(server: TestServer) -> FakeExecutor:
    """The server's fake executor (a test ends a replica with `finish`)."""
    fake = server.services.executor
    assert isinstance(fake, FakeExecutor)
    return fake


@pytest.fixture(scope="module")
def people(server: TestServer) -> dict[str, str]:
    """Tokens: nina, a member of project lab; vic, a viewer of lab; max, a member of project other."""
    with server.client() as admin:
        admin.create_project("lab")
        admin.create_project("other")
        return {
            "nina": admin.create_user("nina", project="lab").token,
            "vic": admin.create_user("vic", project="lab", role="viewer").token,
            "max": admin.create_user("max", project="other").token,
        }


def test_the_new_pages_need_a_session(server: TestServer) -> None:
    for path in ("/notebooks", "/services", "/service/chat", "/pipelines", "/pipeline-runs/1", "/sweeps", "/sweeps/1"):
        answer = httpx.get(server.url + path, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/signin?next="), path
    for path in ("/notebook/1/stop", "/notebook/1/open", "/service/chat/scale", "/pipeline-runs/1/cancel"):
        assert httpx.post(server.url + path, follow_redirects=False).status_code == 303, path


def test_notebooks_open_stop_and_start_for_their_owner_only(server: TestServer, people: dict[str, str]) -> None:
    with Client(server.url, people["nina"]) as nina_api:
        nid = nina_api.submit(
            {
                "kind": "notebook",
                "name": "scratch",
                "project": "lab",
                "idle_timeout": "off",
                "resources": {"cpu": 0.5, "memory": "1GiB", "gpu": 1},
            }
        ).workload.id
        wait_until(lambda: nina_api.get_workload(nid).status == "running", 30, 0.1, "the notebook running")
    nina = browser_for(server, people["nina"])
    listed = nina.get("/notebooks")
    row = _row(listed.text, f"/workloads/{nid}")
    assert "scratch" in row and "running" in row and "<td>1</td>" in row and "never" in row  # GPU share, culls in
    assert 'aria-label="Open notebook scratch"' in row and 'aria-label="Stop notebook scratch"' in row
    csrf = csrf_of(listed.text)
    assert nina.post(f"/notebook/{nid}/open", data={}).status_code == 403  # no CSRF token
    opened = nina.post(f"/notebook/{nid}/open", data={"csrf_token": csrf})
    assert opened.status_code == 303 and opened.headers["location"].startswith(f"/notebooks/{nid}/lab?ptoken=")
    viewer = browser_for(server, people["vic"])
    seen = viewer.get("/notebooks")
    assert "scratch" in seen.text and "Stop notebook" not in seen.text  # sees it, no buttons
    refused = viewer.post(f"/notebook/{nid}/stop", data={"csrf_token": csrf_of(seen.text)})
    assert refused.status_code == 403 and "belongs to another user" in refused.text
    stranger = browser_for(server, people["max"])
    assert "scratch" not in stranger.get("/notebooks").text
    mine = csrf_of(stranger.get("/notebooks").text)
    assert stranger.post(f"/notebook/{nid}/stop", data={"csrf_token": mine}).status_code == 404
    assert nina.post(f"/notebook/{nid}/stop", data={"csrf_token": csrf}).status_code == 303
    with Client(server.url, people["nina"]) as nina_api:
        assert nina_api.get_workload(nid).status == "stopped"
        stopped = _row(nina.get("/notebooks").text, f"/workloads/{nid}")
        assert "Start notebook scratch" in stopped and "Open notebook" not in stopped
        wait_until(
            lambda: nina.post(f"/notebook/{nid}/start", data={"csrf_token": csrf}).status_code == 303,
            30,
            0.2,
            "the notebook started again",
        )  # 409 while its replica is still stopping
        assert nina_api.get_workload(nid).status in ("pending", "scheduled", "starting", "running")
        again = nina.post(f"/notebook/{nid}/start", data={"csrf_token": csrf})
        assert again.status_code == 409 and "only a stopped notebook" in again.text
        nina_api.cancel(nid)


def test_an_owner_made_viewer_may_no_longer_open_stop_or_start_their_notebook(
    server: TestServer, people: dict[str, str]
) -> None:
    """A notebook holds a GPU and runs its user's code: acting on one needs the right to submit in its project,
    so an owner whose role was lowered to viewer sees it but can no longer open, stop or start it (API, console
    and the proxy alike), until the role is raised again."""
    with server.client() as admin:
        olga_token = admin.create_user("olga", project="lab").token
    with Client(server.url, olga_token) as olga_api, server.client() as admin:
        nid = olga_api.submit(
            {
                "kind": "notebook",
                "name": "demoted",
                "project": "lab",
                "idle_timeout": "off",
                "resources": {"cpu": 0.5, "memory": "1GiB", "gpu": 1},
            }
        ).workload.id
        wait_until(lambda: olga_api.get_workload(nid).status == "running", 30, 0.1, "the notebook running")
        admin.set_member("lab", "olga", "viewer")
        olga = browser_for(server, olga_token)
        listed = olga.get("/notebooks")
        row = _row(listed.text, f"/workloads/{nid}")
        assert "demoted" in row and "Stop notebook" not in row and "Open notebook" not in row
        csrf = csrf_of(listed.text)
        for action in ("stop", "open"):
            refused = olga.post(f"/notebook/{nid}/{action}", data={"csrf_token": csrf})
            assert refused.status_code == 403 and "viewer" in refused.text, action
            with pytest.raises(PermissionDeniedError, match="viewer"):
                getattr(olga_api, f"{action}_notebook")(nid)
        proxied = httpx.get(f"{server.url}/notebooks/{nid}/lab", headers={"Authorization": f"Bearer {olga_token}"})
        assert proxied.status_code == 403
        assert olga_api.get_workload(nid).status == "running"
        admin.set_member("lab", "olga", "member")
        olga_api.stop_notebook(nid)
        admin.set_member("lab", "olga", "viewer")
        stopped = _row(olga.get("/notebooks").text, f"/workloads/{nid}")
        assert "Start notebook" not in stopped
        assert olga.post(f"/notebook/{nid}/start", data={"csrf_token": csrf}).status_code == 403
        with pytest.raises(PermissionDeniedError):
            olga_api.start_notebook(nid)
        time.sleep(0.5)  # a scheduling cycle or more: it must stay stopped, holding no GPU
        assert olga_api.get_workload(nid).status == "stopped"
        admin.cancel(nid)


def test_a_service_page_shows_replicas_traffic_and_scales_for_members(
    server: TestServer, people: dict[str, str]
) -> None:
    with Client(server.url, people["nina"]) as nina_api:
        sid = nina_api.submit(
            {
                "kind": "service",
                "name": "chat",
                "project": "lab",
                "command": "serve $PORT",
                "models": ["tiny"],
                "replicas": {"min": 1, "max": 2},
                "resources": {"cpu": 0.1, "memory": "64MiB", "gpu": 1},
            }
        ).workload.id
    gateway = server.app.state.gateway
    with server.app.state.services.db.session(write=False) as session:
        lab = str(accounts_repo.project_by_name(session, "lab").id)  # type: ignore[union-attr]
    gateway.metrics.requests.labels(lab, "chat", "200").inc(3)
    gateway.metrics.requests.labels(lab, "chat", "503").inc()
    gateway.metrics.requests.labels(str(int(lab) + 1000), "chat", "200").inc(40)  # another project's "chat"
    gateway.metrics.chunks.labels(lab, "chat").inc(57)
    for seconds in (0.02, 0.03, 0.2, 0.3):
        gateway.metrics.total.labels(lab, "chat").observe(seconds)
    nina = browser_for(server, people["nina"])
    assert "/service/chat" in _row(nina.get("/services").text, "/service/chat")
    detail = wait_until(
        lambda: (
            (page := nina.get("/service/chat")).status_code == 200
            and re.search(r"<td>GPU [01]</td>", page.text)
            and page
        ),
        30,
        0.2,
        "the replica placed on a GPU",
    )
    text = detail.text
    assert "revision 1" in text and "min 1, max 2" in text and f"/workloads/{sid}" in text
    assert '<a href="/services" aria-current="page">' in text  # the detail page belongs to Services
    assert "4 (200: 3, 503: 1)" in text and "57" in text and "mean 0.138 s" in text
    assert "median ≤ 0.05 s" in text and "95th percentile ≤ 0.5 s" in text
    csrf = csrf_of(text)
    assert nina.post("/service/chat/scale", data={"min": "0", "max": "3"}).status_code == 403  # no CSRF
    assert nina.post("/service/chat/scale", data={"csrf_token": csrf, "min": "0", "max": "3"}).status_code == 303
    with Client(server.url, people["nina"]) as nina_api:
        bounds = nina_api.get_workload(sid).spec["replicas"]
        assert (bounds["min"], bounds["max"]) == (0, 3)
    bad = nina.post("/service/chat/scale", data={"csrf_token": csrf, "min": "3", "max": "2"})
    assert bad.status_code == 422 and "larger than max" in bad.text
    bad = nina.post("/service/chat/scale", data={"csrf_token": csrf, "min": "many"})
    assert bad.status_code == 422 and "whole number" in bad.text
    viewer = browser_for(server, people["vic"])
    seen = viewer.get("/service/chat")
    assert seen.status_code == 200 and "Only members of project lab" in seen.text and "Save bounds" not in seen.text
    refused = viewer.post("/service/chat/scale", data={"csrf_token": csrf_of(seen.text), "max": "9"})
    assert refused.status_code == 403 and "viewers cannot scale" in refused.text
    stranger = browser_for(server, people["max"])
    assert stranger.get("/service/chat").status_code == 404 and "chat" not in stranger.get("/services").text
    with Client(server.url, people["nina"]) as nina_api:
        nina_api.cancel(sid)


def test_a_pipeline_run_is_drawn_as_a_graph_of_its_steps(server: TestServer, people: dict[str, str]) -> None:
    spec = {
        "kind": "pipeline",
        "name": "nightly",
        "project": "lab",
        "params": {"tag": INJECTED},
        "steps": {
            "prep": {"command": "sleep 600", "resources": {"cpu": 0.2}},
            "train": {"needs": ["prep"], "command": "sleep 600", "resources": {"cpu": 0.2}},
            "stats": {"needs": ["prep"], "command": "sleep 600", "resources": {"cpu": 0.2}},
            "report": {"needs": ["train", "stats"], "command": "sleep 600", "resources": {"cpu": 0.2}},
        },
    }
    with Client(server.url, people["nina"]) as nina_api:
        pipes = PipelineClient(nina_api)
        run = pipes.submit(spec, run=True).run
        assert run is not None
        prep = wait_until(lambda: (s := pipes.show(run.id).steps[0]).workload_id and s, 30, 0.1, "prep submitted")
    nina = browser_for(server, people["nina"])
    assert f"/pipeline-runs/{run.id}" in nina.get("/pipelines").text
    page = nina.get(f"/pipeline-runs/{run.id}")
    svg = ET.fromstring(re.search(r"<svg class=\"dag\".*?</svg>", page.text, re.S).group(0))
    groups = {g.find(f"{SVG}title").text: g.get("class") for g in svg.iter(f"{SVG}g")}
    assert groups == {
        "prep: submitted": "step step-submitted",
        "train: waiting": "step step-waiting",
        "stats: waiting": "step step-waiting",
        "report: waiting": "step step-waiting",
    }
    assert len([p for p in svg.iter(f"{SVG}path") if p.get("class") == "edge"]) == 4
    assert [a.get("href") for a in svg.iter(f"{SVG}a")] == [f"/workloads/{prep.workload_id}"]
    assert INJECTED not in page.text and "&lt;script&gt;window.injected=1&lt;/script&gt;" in page.text
    viewer = browser_for(server, people["vic"])
    seen = viewer.get(f"/pipeline-runs/{run.id}")
    assert seen.status_code == 200 and "Cancel run" not in seen.text
    refused = viewer.post(f"/pipeline-runs/{run.id}/cancel", data={"csrf_token": csrf_of(seen.text)})
    assert refused.status_code == 403
    stranger = browser_for(server, people["max"])
    assert stranger.get(f"/pipeline-runs/{run.id}").status_code == 404
    assert f"/pipeline-runs/{run.id}" not in stranger.get("/pipelines").text
    csrf = csrf_of(page.text)
    assert nina.post(f"/pipeline-runs/{run.id}/cancel", data={"csrf_token": csrf}).status_code == 303
    with Client(server.url, people["nina"]) as nina_api:
        assert PipelineClient(nina_api).show(run.id).status == "cancelled"
    assert "Retry failed steps" in nina.get(f"/pipeline-runs/{run.id}").text
    retried = nina.post(f"/pipeline-runs/{run.id}/retry", data={"csrf_token": csrf})
    assert retried.status_code == 303
    new_id = int(retried.headers["location"].rsplit("/", 1)[1])
    assert (
        new_id != run.id
        and f'a retry of <a href="/pipeline-runs/{run.id}"' in nina.get(f"/pipeline-runs/{new_id}").text
    )
    with Client(server.url, people["nina"]) as nina_api:
        PipelineClient(nina_api).cancel(new_id)


def test_a_sweep_page_shows_its_trials_best_trial_and_plots(
    server: TestServer, executor: FakeExecutor, people: dict[str, str]
) -> None:
    spec = {
        "kind": "sweep",
        "name": "tune",
        "project": "lab",
        "objective": {"metric": "loss"},
        "search": {"opt": {"choice": [INJECTED, f"{INJECTED}!"]}, "lr": {"uniform": [0.1, 0.2]}},
        "algorithm": {"sampler": "random", "seed": 3, "pruner": "none"},
        "trials": 2,
        "parallel": 2,
        "trial": {"command": "sleep 600", "resources": {"cpu": 0.2, "memory": "64MiB"}},
    }
    with Client(server.url, people["nina"]) as nina_api:
        sweep_id = nina_api.submit(spec).workload.id
        trials = wait_until(
            lambda: len(t := [x for x in nina_api.sweep(sweep_id).trials if x.workload_id]) == 2 and t,
            30,
            0.1,
            "two trials submitted",
        )
        first = trials[0].workload_id
        wait_until(lambda: nina_api.get_workload(first).status == "running", 30, 0.1, "trial 0 running")
        _report(server, first, {1: 0.5, 2: 0.25})
        key = next(k for k in executor.running() if k.startswith(f"{first}/0/"))
        executor.finish(str(first), 0, attempt=int(key.rsplit("/", 1)[1]))  # the trial's job exits 0
        best = wait_until(lambda: nina_api.sweep(sweep_id).best, 30, 0.1, "trial 0 complete and best")
    assert best.number == trials[0].number and best.value == 0.25
    nina = browser_for(server, people["nina"])
    assert f"/sweeps/{sweep_id}" in nina.get("/sweeps").text
    page = nina.get(f"/sweeps/{sweep_id}")
    assert page.status_code == 200 and 'id="best"' in page.text and "0.25" in page.text
    assert INJECTED not in page.text and "&lt;script&gt;window.injected=1&lt;/script&gt;" in page.text
    plots = [ET.fromstring(s) for s in re.findall(r"<svg class=\"chart plot\".*?</svg>", page.text, re.S)]
    assert len(plots) == 2
    labels = [[t.text for t in p.iter(f"{SVG}text")] for p in plots]
    assert "trial number" in labels[0] and any(x.startswith("loss") for x in labels[0])
    assert "step (as the trial reported it)" in labels[1]
    assert len(list(plots[1].iter(f"{SVG}circle"))) == 2  # the best trial's two reports
    trial_rows = re.findall(r"<tr[^>]*><td>\d+</td><td><span class=\"state trial-", page.text)
    assert len(trial_rows) == 2
    stranger = browser_for(server, people["max"])
    assert stranger.get(f"/sweeps/{sweep_id}").status_code == 404
    assert "not a sweep" in nina.get(f"/sweeps/{first}").text
    with Client(server.url, people["nina"]) as nina_api:
        nina_api.cancel(sweep_id)


def test_the_workload_list_filters_by_kind_and_user_and_pages(server: TestServer, people: dict[str, str]) -> None:
    with Client(server.url, people["nina"]) as nina_api:
        ids = [
            nina_api.submit(
                {
                    "name": f"page-{i}",
                    "project": "lab",
                    "command": "sleep 600",
                    "resources": {"cpu": 0.1, "memory": "32MiB"},
                }
            ).workload.id
            for i in range(3)
        ]
    with server.client() as admin:
        mine = admin.submit(
            {"name": "admins", "command": "sleep 600", "resources": {"cpu": 0.1, "memory": "32MiB"}}
        ).workload.id
    page = browser_for(server, server.admin_token)
    jobs = page.get("/workloads?kind=job&user=nina").text
    assert all(f'/workloads/{i}"' in jobs for i in ids) and f'/workloads/{mine}"' not in jobs
    assert "scratch" not in page.get("/workloads?kind=job").text  # the notebook is another kind
    assert f'/workloads/{mine}"' not in page.get("/workloads?user=nobody").text
    bad = page.get("/workloads?kind=banana")
    assert bad.status_code == 422 and "kind must be one of" in bad.text
    first = page.get("/workloads?user=nina&kind=job&limit=2").text
    assert [f'/workloads/{i}"' in first for i in ids] == [False, True, True]
    older = re.search(r'href="/workloads\?([^"]+)" rel="next"', first).group(1).replace("&amp;", "&")
    assert f"before={ids[1]}" in older
    second = page.get(f"/workloads?{older}").text
    assert f'/workloads/{ids[0]}"' in second and f'/workloads/{ids[2]}"' not in second and ">Newest<" in second
    api = httpx.get(
        f"{server.url}/api/v1/workloads",
        params={"kind": "job", "user": "nina", "limit": 50},
        headers={"authorization": f"Bearer {server.admin_token}"},
    )
    assert {w["id"] for w in api.json()["items"]} >= set(ids) and all(w["user"] == "nina" for w in api.json()["items"])
    with server.client() as admin:
        for wid in [*ids, mine]:
            admin.cancel(wid)


def test_the_new_form_offers_an_environment(server: TestServer) -> None:
    with server.client() as admin:
        admin.create_environment("torch-env", packages="six")  # a submission may name only a built one
    page = browser_for(server, server.admin_token)
    form = page.get("/new").text
    assert '<label for="environment">' in form and '<select id="environment" name="environment">' in form
    assert '<option>torch-env</option>' in form
    made = page.post(
        "/new",
        data={
            "csrf_token": csrf_of(form),
            "mode": "form",
            "name": "with-env",
            "project": "default",
            "command": "true",
            "environment": "torch-env",
        },
    )
    assert made.status_code == 303
    wid = int(made.headers["location"].rsplit("/", 1)[1])
    with server.client() as admin:
        assert admin.get_workload(wid).spec["environment"] == "torch-env"
    bad = page.post(
        "/new",
        data={
            "csrf_token": csrf_of(form),
            "mode": "form",
            "name": "bad-env",
            "project": "default",
            "command": "true",
            "environment": "Not An Env",
        },
    )
    assert bad.status_code == 422 and "environment" in bad.text


def test_the_new_form_offers_only_the_environments_the_caller_may_use(server: TestServer) -> None:
    with server.client() as admin:
        una, bob = (admin.create_user(name, project="default", role="member").token for name in ("env-una", "env-bob"))
    with server.client(una) as client:
        client.create_environment("una-only", packages="six")  # a member's own: not shared
    assert "<option>una-only</option>" in browser_for(server, una).get("/new").text
    assert "una-only" not in browser_for(server, bob).get("/new").text
    assert "<option>una-only</option>" in browser_for(server, server.admin_token).get("/new").text


def _row(html: str, marker: str) -> str:
    """The table row of `html` that contains `marker`."""
    found = next((r for r in re.findall(r"<tr>.*?</tr>", html, re.S) if marker in r), None)
    assert found is not None, f"no row with {marker}"
    return found


def _report(server: TestServer, workload_id: int, values: dict[int, float]) -> None:
    """Report the trial's loss at each step, as the trial's job would, with the trial's own token."""
    services = server.services
    with services.db.session(write=False) as session:
        row = repo.workload_by_id(session, workload_id)
        assert row is not None
        token = sweeps.trial_env(session, services.sweep_studies(), server.url, row)["GPUPOOL_TRIAL_TOKEN"]
    for step, value in values.items():
        answer = httpx.post(
            f"{server.url}/api/v1/sweeps/trials/{workload_id}/report",
            params={"step": step, "metric": f"loss={value}"},
            headers={"x-gpupool-trial-token": token},
        )
        assert answer.status_code == 200, answer.text
