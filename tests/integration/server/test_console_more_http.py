"""More of the console over plain HTTP against a real server (SQLite and PostgreSQL, two declared A100s, a
fake executor whose replicas run until the test ends them): a sweep whose trial reported thousands of steps
(the API answers the last few, the page the latest reports and a thinned curve); a service's revisions,
update and rollback; a service's durable traffic per minute (written once, kept across a restart, pruned)."""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from optuna.storages._rdb.models import TrialIntermediateValueModel
from sqlalchemy import insert
from tests.integration.server.test_console_http import browser_for, csrf_of
from tests.integration.server.test_console_kinds_http import INJECTED, SVG, _report
from tests.support.databases import temporary_postgres_database
from tests.support.servers import TestServer, server_settings, start_server, wait_until

from gpupool.client.http import Client
from gpupool.domain.specs import parse_spec
from gpupool.domain.sweeps import SweepSpec
from gpupool.executors.fake import RUN_FOREVER, FakeExecutor
from gpupool.server.service_traffic import RETENTION_S, minute_of
from gpupool.server.services.sweeps import DEFAULT_STEPS, MAX_STEPS_SHOWN
from gpupool.store.repos import service_traffic
from gpupool.store.repos import workloads as repo

MANY_STEPS = 5000  # above the plot's 2,000 points and the API's 1,000 steps, yet quick to insert in one statement


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServer]:
    """One server per database for the module (two A100s in exclusive mode, 16 CPUs)."""
    tmp = tmp_path_factory.mktemp("console-more")
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
    """Tokens: nina, a member of project lab; vic, a viewer of lab; max, a member of project other; ada, an
    admin of project lab."""
    with server.client() as admin:
        admin.create_project("lab")
        admin.create_project("other")
        return {
            "nina": admin.create_user("nina", project="lab").token,
            "vic": admin.create_user("vic", project="lab", role="viewer").token,
            "max": admin.create_user("max", project="other").token,
            "ada": admin.create_user("ada", project="lab", role="admin").token,
        }


def _add_steps(server: TestServer, sweep_id: int, number: int, steps: range) -> None:
    """Store a running trial's objective at `steps` (loss 1 / (step + 1)) in Optuna's own table, in one
    statement: what a trial reporting for hours leaves behind, without the hours."""
    studies = server.services.sweep_studies()
    storage = studies.storage()
    study = studies.study(sweep_id, _spec_of(server, sweep_id))
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    finite = TrialIntermediateValueModel.TrialIntermediateValueType.FINITE
    rows = [
        {"trial_id": trial_id, "step": s, "intermediate_value": 1 / (s + 1), "intermediate_value_type": finite}
        for s in steps
    ]
    with storage.engine.begin() as connection:
        connection.execute(insert(TrialIntermediateValueModel.__table__), rows)


def _spec_of(server: TestServer, sweep_id: int) -> SweepSpec:
    with server.services.db.session(write=False) as session:
        row = repo.workload_by_id(session, sweep_id)
        assert row is not None
        spec = parse_spec(row.spec)
        assert isinstance(spec, SweepSpec)
        return spec


def test_a_trial_of_many_steps_is_answered_in_part_and_drawn_thinned(
    server: TestServer, executor: FakeExecutor, people: dict[str, str]
) -> None:
    spec = {
        "kind": "sweep",
        "name": "long",
        "project": "lab",
        "objective": {"metric": "loss"},
        "search": {"lr": {"uniform": [0.1, 0.2]}},
        "algorithm": {"sampler": "random", "seed": 1, "pruner": "none"},
        "trials": 1,
        "parallel": 1,
        "trial": {"command": "sleep 600", "resources": {"cpu": 0.2, "memory": "64MiB"}},
    }
    with Client(server.url, people["nina"]) as nina_api:
        sweep_id = nina_api.submit(spec).workload.id
        trial = wait_until(
            lambda: (t := nina_api.sweep(sweep_id).trials) and t[0].workload_id and t[0], 30, 0.1, "the trial submitted"
        )
        wid = trial.workload_id
        wait_until(lambda: nina_api.get_workload(wid).status == "running", 30, 0.1, "the trial running")
        _report(server, wid, {0: 1.0})
        _add_steps(server, sweep_id, trial.number, range(1, MANY_STEPS))
        key = next(k for k in executor.running() if k.startswith(f"{wid}/0/"))
        executor.finish(str(wid), 0, attempt=int(key.rsplit("/", 1)[1]))
        best = wait_until(lambda: nina_api.sweep(sweep_id).best, 30, 0.1, "the trial complete")
        assert best.steps_total == MANY_STEPS and best.last_step == MANY_STEPS - 1
        assert [s for s, _ in best.intermediate] == list(range(MANY_STEPS - DEFAULT_STEPS, MANY_STEPS))
        most = nina_api.sweep(sweep_id, steps=MAX_STEPS_SHOWN).trials[0]
        assert len(most.intermediate) == MAX_STEPS_SHOWN and most.intermediate[-1] == (MANY_STEPS - 1, 1 / MANY_STEPS)
        none = nina_api.sweep(sweep_id, steps=0).trials[0]
        assert none.intermediate == [] and none.last_step == MANY_STEPS - 1 and none.steps_total == MANY_STEPS
    too_many = httpx.get(
        f"{server.url}/api/v1/sweeps/{sweep_id}",
        params={"steps": MAX_STEPS_SHOWN + 1},
        headers={"authorization": f"Bearer {people['nina']}"},
    )
    assert too_many.status_code == 422 and too_many.json()["error"]["field"] == "steps"
    page = browser_for(server, people["nina"]).get(f"/sweeps/{sweep_id}").text
    assert f"(last 5 of {MANY_STEPS:,})" in page and f"{MANY_STEPS - 1}: {1 / MANY_STEPS:g}" in page
    curve = [ET.fromstring(s) for s in re.findall(r"<svg class=\"chart plot\".*?</svg>", page, re.S)][1]
    circles = list(curve.iter(f"{SVG}circle"))
    assert 2 <= len(circles) <= 2000
    assert f"2,000 of {MANY_STEPS:,} reports shown" in "".join(t.text or "" for t in curve.iter(f"{SVG}text"))
    xs = [float(c.get("cx")) for c in circles]
    assert xs == sorted(xs) and xs[-1] - xs[0] > 400  # spread over the whole run, not its tail


def _service(name: str, command: str = "serve $PORT") -> dict[str, object]:
    return {
        "kind": "service",
        "name": name,
        "project": "lab",
        "command": command,
        "models": ["tiny"],
        "replicas": {"min": 1, "max": 2},
        "resources": {"cpu": 0.1, "memory": "64MiB"},
    }


def test_a_service_page_lists_revisions_and_members_update_and_roll_back(
    server: TestServer, people: dict[str, str]
) -> None:
    with Client(server.url, people["nina"]) as nina_api:
        sid = nina_api.submit(_service("web")).workload.id
    nina = browser_for(server, people["nina"])
    first = nina.get("/service/web").text
    assert "<td>1 (current)</td>" in first and "<td>submitted</td>" in first and "Roll back" not in first
    draft = re.search(r'<textarea id="spec_yaml" name="spec_yaml"[^>]*>(.*?)</textarea>', first, re.S).group(1)
    assert "name: web" in draft and "command: serve $PORT" in draft
    new_yaml = draft.replace("serve $PORT", "serve --fast $PORT").replace("max: 2", "max: 3")
    assert nina.post("/service/web/update", data={"spec_yaml": new_yaml}).status_code == 403  # no CSRF token
    csrf = csrf_of(first)
    updated = nina.post("/service/web/update", data={"csrf_token": csrf, "spec_yaml": new_yaml})
    assert updated.status_code == 303 and updated.headers["location"] == "/service/web#revisions"
    with Client(server.url, people["nina"]) as nina_api:
        assert nina_api.get_workload(sid).spec["command"] == "serve --fast $PORT"
    second = nina.get("/service/web").text
    assert "<td>2 (current)</td>" in second and "<td>updated by nina</td>" in second
    assert "<td>changed command, replicas.max</td>" in second and "Roll back to the spec of revision 1" in second
    renamed = new_yaml.replace("name: web", "name: other") + f"# {INJECTED}\n"
    refused = nina.post("/service/web/update", data={"csrf_token": csrf, "spec_yaml": renamed})
    assert refused.status_code == 422 and "a service keeps its name" in refused.text
    assert INJECTED not in refused.text and "&lt;script&gt;window.injected=1&lt;/script&gt;" in refused.text
    assert "name: other" in refused.text  # the editor keeps what was sent
    broken = nina.post("/service/web/update", data={"csrf_token": csrf, "spec_yaml": "name: [web"})
    assert broken.status_code == 422 and "the YAML cannot be read" in broken.text
    assert nina.post("/service/web/rollback", data={"csrf_token": csrf}).status_code == 303
    third = nina.get("/service/web").text
    assert "<td>3 (current)</td>" in third and "rolled back by nina to the spec of revision 1" in third
    with Client(server.url, people["nina"]) as nina_api:
        assert nina_api.get_workload(sid).spec["command"] == "serve $PORT"
    viewer = browser_for(server, people["vic"])
    seen = viewer.get("/service/web")
    assert seen.status_code == 200 and "<td>3 (current)</td>" in seen.text
    assert "Update service" not in seen.text and "Roll back" not in seen.text
    vcsrf = csrf_of(seen.text)
    refused = viewer.post("/service/web/update", data={"csrf_token": vcsrf, "spec_yaml": new_yaml})
    assert refused.status_code == 403 and "viewers cannot update" in refused.text
    assert viewer.post("/service/web/rollback", data={"csrf_token": vcsrf}).status_code == 403
    stranger = browser_for(server, people["max"])
    mine = csrf_of(stranger.get("/services").text)
    assert stranger.get("/service/web").status_code == 404
    assert stranger.post("/service/web/rollback", data={"csrf_token": mine}).status_code == 404
    with Client(server.url, people["nina"]) as nina_api:
        assert nina_api.get_workload(sid).spec["command"] == "serve $PORT"
        nina_api.cancel(sid)


RATE = re.compile(r"Last 3 hours: (\d+) requests, (\d+) errors, (\d+) streamed chunks")


def _rates(client: httpx.Client, name: str) -> tuple[int, ...]:
    found = RATE.search(client.get(f"/service/{name}").text)
    assert found, "no rate summary on the page"
    return tuple(int(x) for x in found.groups())


def _call(server: TestServer, token: str, name: str, times: int) -> None:
    """Requests through the gateway; with no ready replica and max_queue 0, each is answered 503 at once."""
    for _ in range(times):
        answer = httpx.get(f"{server.url}/services/{name}/v1/models", headers={"authorization": f"Bearer {token}"})
        assert answer.status_code == 503, answer.text


def test_a_service_page_charts_its_traffic_per_minute_from_a_durable_series(
    server: TestServer, people: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _service("rated") | {"replicas": {"min": 0, "max": 1}, "scaling": {"max_queue": 0}}
    with Client(server.url, people["nina"]) as nina_api:
        sid = nina_api.submit(spec).workload.id
    nina = browser_for(server, people["nina"])
    assert _rates(nina, "rated") == (0, 0, 0) and "no values reported yet" in nina.get("/service/rated").text
    _call(server, people["nina"], "rated", 3)
    assert _rates(nina, "rated") == (3, 3, 0)  # counted, not written yet: the page adds the unwritten counts
    traffic = server.app.state.gateway.traffic
    for _ in range(5):
        traffic.chunk(sid)  # no replica of these tests streams a body: count chunks as the relay does
    db = server.services.db
    assert traffic.flush(db) and not traffic.flush(db)  # written once; nothing left to write
    assert _rates(nina, "rated") == (3, 3, 5)  # stored, not doubled
    page = nina.get("/service/rated").text
    plots = [ET.fromstring(s) for s in re.findall(r"<svg class=\"chart plot\".*?</svg>", page, re.S)]
    assert [p.find(f"{SVG}title").text.split(" per minute")[0] for p in plots] == [
        "Requests and errors",
        "Streamed chunks (about one per token)",
    ]
    assert {pl.get("class") for pl in plots[0].iter(f"{SVG}polyline")} == {"requests", "errors"}
    assert "minutes before now" in [t.text for t in plots[0].iter(f"{SVG}text")]

    def refused(*_args: object) -> None:
        raise RuntimeError("the store refused the write")

    _call(server, people["nina"], "rated", 1)
    monkeypatch.setattr("gpupool.server.service_traffic.service_traffic.add", refused)
    with pytest.raises(RuntimeError):
        traffic.flush(db)
    assert _rates(nina, "rated") == (4, 4, 5)  # a failed write keeps its counts for the next one
    monkeypatch.undo()
    assert traffic.flush(db) and _rates(nina, "rated") == (4, 4, 5)
    viewer = browser_for(server, people["vic"])
    assert _rates(viewer, "rated") == (4, 4, 5)
    assert browser_for(server, people["max"]).get("/service/rated").status_code == 404
    with Client(server.url, people["nina"]) as nina_api:
        nina_api.cancel(sid)


def test_old_minutes_are_pruned_when_the_series_is_written(server: TestServer, people: dict[str, str]) -> None:
    with Client(server.url, people["nina"]) as nina_api:
        sid = nina_api.submit(_service("pruned") | {"replicas": {"min": 0, "max": 1}}).workload.id
    db, now = server.services.db, time.time()
    old, recent = minute_of(now - RETENTION_S - 3600), minute_of(now - 3600)
    with db.session() as session:
        service_traffic.add(session, {(sid, old): (7, 0, 0), (sid, recent): (2, 1, 0)})
        service_traffic.add(session, {(sid, recent): (1, 0, 4)})  # added to, not replaced
    traffic = server.app.state.gateway.traffic
    traffic.chunk(sid)
    assert traffic.flush(db)
    stored = traffic.series(db, sid, 0.0)
    assert old not in stored and stored[recent] == (3, 1, 4) and sum(t for _, _, t in stored.values()) == 5
    with Client(server.url, people["nina"]) as nina_api:
        nina_api.cancel(sid)


def test_the_traffic_series_survives_a_restart(tmp_path: Path) -> None:
    settings = server_settings(tmp_path / "home", f"sqlite:///{tmp_path / 'gpupool.db'}", gpus="1xA100-80GB")
    first = start_server(settings, FakeExecutor(default=RUN_FOREVER))
    try:
        with first.client() as admin:
            admin.create_project("lab")
            token = admin.create_user("nina", project="lab").token
        with Client(first.url, token) as nina_api:
            nina_api.submit(_service("kept") | {"replicas": {"min": 0, "max": 1}, "scaling": {"max_queue": 0}})
        _call(first, token, "kept", 2)
    finally:
        first.stop()  # a clean stop writes the unwritten minutes
    again = start_server(settings, FakeExecutor(default=RUN_FOREVER))
    try:
        assert _rates(browser_for(again, token), "kept") == (2, 2, 0)
    finally:
        again.stop()


def _idle_cap(server: TestServer, project: str) -> int | None:
    with server.client() as admin:
        return next(p.max_idle_timeout_s for p in admin.projects() if p.name == project)


def test_a_project_admin_sets_and_removes_its_notebook_idle_cap(server: TestServer, people: dict[str, str]) -> None:
    ada = browser_for(server, people["ada"])
    page = ada.get("/admin").text
    lab = re.search(r'<section class="card" id="project-lab">.*?</section>', page, re.S).group(0)
    assert "Notebook idle cap: none" in lab and "Set idle cap of lab" in lab
    assert "Set idle cap of other" not in page  # ada administers lab only
    assert ada.post("/admin/projects/lab/idle-cap", data={"max_idle_timeout": "4h"}).status_code == 403
    assert _idle_cap(server, "lab") is None
    csrf = csrf_of(page)
    answer = ada.post("/admin/projects/lab/idle-cap", data={"csrf_token": csrf, "max_idle_timeout": "4h"})
    assert answer.status_code == 303 and answer.headers["location"] == "/admin#project-lab"
    assert _idle_cap(server, "lab") == 4 * 3600
    lab = re.search(r'<section class="card" id="project-lab">.*?</section>', ada.get("/admin").text, re.S).group(0)
    assert "Notebook idle cap: <strong>4h00m</strong>" in lab and 'value="4h00m"' in lab and "Remove idle cap" in lab
    for bad, why in (("soon", "cannot read"), ("off", "is not a cap"), ("", "give a duration")):
        refused = ada.post("/admin/projects/lab/idle-cap", data={"csrf_token": csrf, "max_idle_timeout": bad})
        assert refused.status_code == 422 and why in refused.text and "max_idle_timeout" in refused.text, bad
    assert _idle_cap(server, "lab") == 4 * 3600
    refused = ada.post("/admin/projects/other/idle-cap", data={"csrf_token": csrf, "max_idle_timeout": "1h"})
    assert refused.status_code in (403, 404) and _idle_cap(server, "other") is None
    nina = browser_for(server, people["nina"])
    seen = nina.get("/admin").text
    assert "Notebook idle cap: <strong>4h00m</strong>" in seen and "Set idle cap of lab" not in seen
    refused = nina.post("/admin/projects/lab/idle-cap", data={"csrf_token": csrf_of(seen), "remove": "1"})
    assert refused.status_code == 403 and _idle_cap(server, "lab") == 4 * 3600
    removed = ada.post("/admin/projects/lab/idle-cap", data={"csrf_token": csrf, "remove": "1"})
    assert removed.status_code == 303 and _idle_cap(server, "lab") is None
    pool_admin = browser_for(server, server.admin_token)
    admin_csrf = csrf_of(pool_admin.get("/admin").text)
    assert (
        pool_admin.post(
            "/admin/projects/other/idle-cap", data={"csrf_token": admin_csrf, "max_idle_timeout": "30m"}
        ).status_code
        == 303
    )
    assert _idle_cap(server, "other") == 1800


def test_live_pages_mark_the_parts_the_script_refreshes(server: TestServer, people: dict[str, str]) -> None:
    with Client(server.url, people["nina"]) as nina_api:
        wid = nina_api.submit(
            {"name": "live", "project": "lab", "command": "sleep 600", "resources": {"cpu": 0.1, "memory": "32MiB"}}
        ).workload.id
        sid = nina_api.submit(_service("livesvc")).workload.id
    nina = browser_for(server, people["nina"])
    page = nina.get(f"/workloads/{wid}").text
    parts = re.findall(r'id="(live-[a-z]+)"( data-live)?', page)
    assert parts == [("live-head", " data-live"), ("live-facts", " data-live"), ("live-timeline", " data-live")]
    head = re.search(r'<div id="live-head" data-live>.*?</div>\s*</div>', page, re.S).group(0)
    assert 'id="status"' in head and "Cancel" in head and 'id="logs"' not in head  # logs stream on their own
    with Client(server.url, people["nina"]) as nina_api:
        nina_api.cancel(wid)
        wait_until(lambda: nina_api.get_workload(wid).status == "cancelled", 30, 0.1, "the job cancelled")
    ended = nina.get(f"/workloads/{wid}").text
    assert 'id="live-head"' in ended and "data-live" not in ended  # nothing left to refresh: the script stops
    service = nina.get("/service/livesvc").text
    assert re.findall(r'id="(live-[a-z]+)" data-live', service) == [
        "live-state",
        "live-traffic",
        "live-replicas",
        "live-revisions",
        "live-history",
    ]
    assert 'id="live-notebooks" data-live' in nina.get("/notebooks").text
    script = httpx.get(f"{server.url}/console/static/console.js")
    assert script.status_code == 200 and "Pause live updates" in script.text and "visibilitychange" in script.text
    with Client(server.url, people["nina"]) as nina_api:
        nina_api.cancel(sid)


def test_the_new_form_makes_a_notebook_and_a_service(server: TestServer) -> None:
    page = browser_for(server, server.admin_token)
    form = page.get("/new").text
    assert all(f'<option value="{kind}"' in form for kind in ("job", "notebook", "service"))
    common = {"csrf_token": csrf_of(form), "mode": "form", "project": "default", "cpu": "1", "memory": "1GiB"}
    notebook = page.post("/new", data={**common, "kind": "notebook", "name": "form-nb", "idle_timeout": "2h",
                                       "command": "ignored for a notebook", "replicas": "1"})
    assert notebook.status_code == 303, notebook.text
    service = page.post("/new", data={**common, "kind": "service", "name": "form-svc", "port": "9000",
                                      "command": "python serve.py --port $PORT", "min_replicas": "0", "replicas": "3",
                                      "models": "tiny-a, tiny-b"})
    assert service.status_code == 303, service.text
    made = {kind: int(r.headers["location"].rsplit("/", 1)[1]) for kind, r in (("nb", notebook), ("svc", service))}
    with server.client() as admin:
        nb, svc = admin.get_workload(made["nb"]), admin.get_workload(made["svc"])
        assert (nb.kind, nb.spec["idle_timeout"]) == ("notebook", 7200) and "ignored" not in str(nb.spec)
        assert (svc.kind, svc.spec["port"], svc.spec["replicas"]) == ("service", 9000, {"min": 0, "max": 3})
        assert svc.spec["models"] == ["tiny-a", "tiny-b"]
        admin.cancel(made["nb"])
        admin.cancel(made["svc"])
    # a service without a command is refused with the spec's own message, the form kept
    refused = page.post("/new", data={**common, "kind": "service", "name": "no-cmd", "models": "m"})
    assert refused.status_code == 422 and "command" in refused.text and 'value="no-cmd"' in refused.text
    # kinds the form does not make are named, not guessed
    other = page.post("/new", data={**common, "kind": "sweep", "name": "x", "command": "true"})
    assert other.status_code == 422 and "YAML editor" in other.text
