"""The web console in a real browser: headless Chromium (Debian's, driven by Playwright) against a real
`gpupool up` with two simulated A100s and the local executor (real replica processes). Sign in; submit a job
from the form and watch its logs stream; a pending job shows its reason and an admin's quota change starts
it; cancel; a member cannot see another project's workload (page and API); CSRF and script injection are
inert; inputs are labelled; the pages fit a phone-width screen. Screenshots of every page are written to the
pytest temp folder (`console-screenshots*`)."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
from tests.support.processes import ServerProcess
from tests.support.servers import wait_until

from gpupool.client.http import Client
from gpupool.client.pipelines import PipelineClient
from gpupool.domain.errors import NotFoundError

CHROMIUM = "/usr/bin/chromium"
PHONE = {"width": 390, "height": 844}  # a common phone screen in CSS pixels
DESKTOP = {"width": 1280, "height": 900}
PAGES = ("/", "/workloads", "/new", "/nodes", "/queues", "/usage", "/admin", "/notebooks", "/services", "/pipelines",
         "/sweeps")
LIVE_MS = 5000  # console.js asks for a live page again this often
INJECTED = "<script>window.injected=1</script><img src=x onerror=window.injected=2>"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("console") / "home",
                            ["--gpus", "2xA100-80GB", "--gpu-mode", "exclusive"],
                            extra_env={"GPUPOOL_SAMPLE_INTERVAL_S": "0.5"})
    process.start()
    yield process
    process.stop()
    process.stop_replicas()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"the browser tests need Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless=new"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("console-screenshots")


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    opened = browser.new_context(viewport=DESKTOP)  # type: ignore[arg-type]
    opened.set_default_timeout(20_000)
    yield opened
    opened.close()


def sign_in(context: BrowserContext, url: str, token: str) -> Page:
    """Sign in through the form and return the page, on the overview."""
    page = context.new_page()
    page.goto(url + "/workloads")
    expect(page).to_have_url(url + "/signin?next=%2Fworkloads")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(url + "/workloads")
    return page


def job(name: str, command: str, project: str = "default", gpu: int = 1) -> str:
    return (f"name: {name}\nproject: {project}\ncommand: {command!r}\n"
            f"resources: {{cpu: 0.2, memory: 64MiB, gpu: {gpu}}}\n")


def test_sign_in_submit_from_the_form_and_follow_its_logs(server: ServerProcess, context: BrowserContext,
                                                           shots: Path) -> None:
    page = sign_in(context, server.url, (server.home / "token").read_text().strip())
    assert not any(c["name"] == "gpupool_session" and not c["httpOnly"] for c in context.cookies())
    page.get_by_role("link", name="New workload").click()
    page.get_by_label("Name").fill("hello")
    page.get_by_label("Command").fill("for i in 1 2 3; do echo line-$i; sleep 0.5; done")
    page.get_by_label("GPUs (a count such as 2, or a share such as 0.5)").fill("1")
    page.get_by_role("button", name="Check before submitting").click()
    expect(page.get_by_role("status")).to_contain_text("Can run now on node (GPU 0)")  # the dry run
    page.screenshot(path=shots / "new.png", full_page=True)
    page.get_by_role("button", name="Submit", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("hello")
    logs = page.locator("#logs")
    expect(logs).to_contain_text("line-1", timeout=30_000)
    expect(logs).to_contain_text("line-3")  # streamed while the replica ran
    expect(page.locator("#logs-state")).to_contain_text("ended")
    page.reload()
    expect(page.locator("#status")).to_have_text("succeeded")
    expect(page.get_by_role("cell", name="GPU 0")).to_be_visible()  # the replica's node and card
    page.screenshot(path=shots / "workload.png", full_page=True)


def test_pending_reason_cancel_and_a_quota_change_that_starts_a_job(server: ServerProcess,
                                                                    context: BrowserContext, shots: Path) -> None:
    with server.client() as admin:
        admin.create_project("vision")
        admin.update_queue("vision", limit={"gpu": 0})
        first = admin.submit(job("blocked-a", "sleep 60", "vision")).workload.id
        second = admin.submit(job("blocked-b", "sleep 60", "vision")).workload.id
    page = sign_in(context, server.url, (server.home / "token").read_text().strip())
    page.goto(f"{server.url}/workloads/{first}")
    expect(page.locator(".reason")).to_contain_text("limit")
    page.goto(f"{server.url}/workloads?project=vision&status=pending")
    expect(page.get_by_role("row", name="blocked-a")).to_contain_text("limit")
    page.screenshot(path=shots / "workloads.png", full_page=True)
    page.goto(f"{server.url}/workloads/{first}")
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#status")).to_have_text("cancelled")
    page.goto(f"{server.url}/queues")
    form = page.get_by_role("form", name="Change queue vision")
    form.get_by_label("GPU limit (empty: none)").fill("1")
    form.get_by_role("button", name="Save vision").click()
    expect(page.get_by_role("row", name="vision")).to_contain_text("GPU 1, CPU none")
    page.screenshot(path=shots / "queues.png", full_page=True)
    page.goto(f"{server.url}/workloads/{second}")
    expect(page.locator("#status")).to_have_text("running", timeout=30_000)  # live updates, no reload
    toggle = page.get_by_role("button", name="Pause live updates")
    toggle.click()
    expect(page.locator("#live-toggle")).to_have_attribute("aria-pressed", "true")
    with server.client() as admin:
        admin.cancel(second)
    page.wait_for_timeout(LIVE_MS + 1000)  # a paused page asks for nothing
    expect(page.locator("#status")).to_have_text("running")
    page.get_by_role("button", name="Resume live updates").click()
    expect(page.locator("#status")).to_have_text("cancelled", timeout=15_000)
    expect(page.locator("#live-state-text")).to_contain_text("Live updates ended")
    page.goto(f"{server.url}/")
    page.screenshot(path=shots / "overview.png", full_page=True)


def test_a_member_sees_only_their_projects_workloads(server: ServerProcess, context: BrowserContext) -> None:
    with server.client() as admin:
        admin.create_project("secret")
        hidden = admin.submit(job("hidden-job", "sleep 1", "secret", gpu=0)).workload.id
        admin.create_project("team")
        token = admin.create_user("mia", project="team").token
    with Client(server.url, token) as mia:
        own = mia.submit(job("mine", "sleep 1", "team", gpu=0)).workload.id
        with pytest.raises(NotFoundError):
            mia.get_workload(hidden)
    page = sign_in(context, server.url, token)
    expect(page.get_by_role("link", name="mine")).to_be_visible()
    expect(page.get_by_role("link", name="hidden-job")).to_have_count(0)
    response = page.goto(f"{server.url}/workloads/{hidden}")
    assert response is not None and response.status == 404
    expect(page.get_by_role("alert")).to_contain_text(f"workload {hidden} not found")
    response = page.goto(f"{server.url}/workloads?before=abc")  # a bad parameter: a page, not JSON
    assert response is not None and response.status == 422
    expect(page.get_by_role("alert")).to_contain_text("before: ")
    page.get_by_role("link", name="Back to /workloads").click()
    expect(page.get_by_role("link", name="mine")).to_be_visible()
    page.goto(f"{server.url}/workloads/{own}")
    expect(page.get_by_role("heading", level=1)).to_contain_text("mine")
    page.goto(f"{server.url}/nodes")
    expect(page.get_by_role("button", name="Apply")).to_have_count(0)  # no GPU changes for a member


def test_csrf_and_injected_markup_are_inert(server: ServerProcess, context: BrowserContext) -> None:
    with server.client() as admin:
        wid = admin.submit(job("inject", f"echo '{INJECTED}'; sleep 60", gpu=0)).workload.id
        wait_until(lambda: admin.get_workload(wid).status == "running", 30, 0.2, "injected job running")
    page = sign_in(context, server.url, (server.home / "token").read_text().strip())
    page.goto(f"{server.url}/workloads/{wid}")
    expect(page.locator(".spec")).to_contain_text("<script>window.injected=1</script>")  # shown as text
    expect(page.locator("#logs")).to_contain_text("<img src=x")  # the log line too
    assert page.evaluate("window.injected") is None
    assert page.locator("main script, main img").count() == 0
    # a form post with the session cookie but without the CSRF token changes nothing
    refused = context.request.post(f"{server.url}/workloads/{wid}/cancel", form={"x": "1"})
    assert refused.status == 403 and "CSRF" in refused.text()
    forged = context.request.post(f"{server.url}/workloads/{wid}/cancel", form={"csrf_token": "0" * 64})
    assert forged.status == 403
    # a sign-in form posted from another site is refused (login CSRF)
    other = httpx.post(f"{server.url}/signin", data={"token": "gpp_x"}, headers={"origin": "https://evil.example"})
    assert other.status_code == 403 and "gpupool_session" not in other.headers.get("set-cookie", "")
    with server.client() as admin:
        assert admin.get_workload(wid).status == "running"
        admin.cancel(wid)


def test_a_pipeline_run_as_a_graph_reachable_by_keyboard_and_at_phone_width(
        server: ServerProcess, context: BrowserContext, shots: Path) -> None:
    steps = {"fetch": {"command": "true", "resources": {"cpu": 0.2, "memory": "64MiB"}},
             "train": {"needs": ["fetch"], "command": "true", "resources": {"cpu": 0.2, "memory": "64MiB"}},
             "report": {"needs": ["train"], "command": "true", "resources": {"cpu": 0.2, "memory": "64MiB"}}}
    with server.client() as admin:
        pipes = PipelineClient(admin)
        run = pipes.submit({"kind": "pipeline", "name": "tiny", "steps": steps}, run=True).run
        assert run is not None
        wait_until(lambda: pipes.show(run.id).status == "succeeded", 60, 0.2, "the pipeline run succeeded")
    page = sign_in(context, server.url, (server.home / "token").read_text().strip())
    page.get_by_role("link", name="Pipelines").click()
    page.get_by_role("row", name="tiny").get_by_role("link", name=str(run.id)).click()
    graph = page.get_by_role("img", name=f"Steps of pipeline run {run.id} (tiny) and what each needs")
    expect(graph.locator("g.step-succeeded")).to_have_count(3)
    page.screenshot(path=shots / "pipeline-run.png", full_page=True)
    page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 1
    page.set_viewport_size(DESKTOP)  # type: ignore[arg-type]
    first_step = graph.locator("a").first
    first_step.focus()  # a step's box is a link the keyboard reaches
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_contain_text("fetch")


def test_a_sweep_shows_its_best_trial_and_plots(server: ServerProcess, context: BrowserContext, shots: Path) -> None:
    report = ("import gpupool, os; lr = float(os.environ['GPUPOOL_PARAM_LR']); "
              "[gpupool.report(s, loss=lr / s) for s in (1, 2, 3)]")
    spec = {"kind": "sweep", "name": "lr-search", "objective": {"metric": "loss"},
            "search": {"lr": {"uniform": [0.1, 0.9]}}, "algorithm": {"sampler": "random", "seed": 7},
            "trials": 2, "parallel": 2,
            "trial": {"command": f"{shlex.quote(sys.executable)} -c {shlex.quote(report)}",
                      "resources": {"cpu": 0.2, "memory": "256MiB"}}}
    with server.client() as admin:
        sweep_id = admin.submit(spec).workload.id
        best = wait_until(lambda: admin.get_workload(sweep_id).status == "succeeded" and admin.sweep(sweep_id).best,
                          90, 0.3, "the sweep done with a best trial")
    page = sign_in(context, server.url, (server.home / "token").read_text().strip())
    page.get_by_role("link", name="Sweeps").click()
    page.get_by_role("row", name="lr-search").get_by_role("link", name=str(sweep_id)).click()
    expect(page.locator("#best")).to_contain_text(f"{best.value:g}")
    expect(page.get_by_role("img", name="loss of each trial of sweep lr-search, and the best so far")).to_be_visible()
    curve = page.get_by_role("img", name=f"loss of the best trial by step (trial {best.number})")
    expect(curve.locator("circle")).to_have_count(3)
    expect(page.locator("#trials tbody tr")).to_have_count(2)
    page.screenshot(path=shots / "sweep.png", full_page=True)


def test_labels_phone_width_and_screenshots(server: ServerProcess, browser: Browser, shots: Path) -> None:
    context = browser.new_context(viewport=PHONE)  # type: ignore[arg-type]
    try:
        page = sign_in(context, server.url, (server.home / "token").read_text().strip())
        for path in PAGES:
            page.goto(server.url + path)
            unlabelled = page.evaluate("""() => [...document.querySelectorAll(FIELDS)]
                .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map(e => e.name)"""
                                       .replace("FIELDS", "'input:not([type=hidden]), select, textarea'"))
            assert unlabelled == [], f"{path}: inputs without a label: {unlabelled}"
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, f"{path} is {overflow} px wider than a phone screen"
            name = "overview" if path == "/" else path.strip("/")
            page.screenshot(path=shots / f"phone-{name}.png", full_page=True)
        page.goto(server.url + "/admin")  # the pool's admin caps the default project's notebooks
        cap = page.get_by_role("form", name="Notebook idle cap of default")
        cap.get_by_label("Idle cap").fill("4h")
        cap.get_by_role("button", name="Set idle cap of default").click()
        expect(page.locator("#project-default .idle-cap")).to_contain_text("4h00m")
        page.get_by_role("button", name="Remove idle cap of default").click()
        expect(page.locator("#project-default .idle-cap")).to_contain_text("none")
        page.set_viewport_size(DESKTOP)  # type: ignore[arg-type]
        for path in ("/nodes", "/usage"):
            page.goto(server.url + path)
            page.screenshot(path=shots / f"{path.strip('/')}.png", full_page=True)
        page.get_by_role("button", name="Sign out").click()
        expect(page).to_have_url(server.url + "/signin")
        page.goto(server.url + "/")
        expect(page).to_have_url(server.url + "/signin?next=%2F")  # signed out: the cookie is gone
    finally:
        context.close()
    assert len(list(shots.glob("phone-*.png"))) == len(PAGES)
