"""Notebooks end to end: a real server with the local executor runs real JupyterLab servers as `kind: notebook`
workloads, reached through /notebooks/<id>/ with gpupool auth in front. One server and one long-lived notebook
for the module (JupyterLab starts in 2-4 s unloaded); the culling test adds one more."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright
from tests.integration.server.test_console_http import browser_for
from tests.support.jupyter import execute, start_kernel
from tests.support.servers import TestServer, server_settings, start_server, wait_until
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from gpupool.client.http import Client
from gpupool.domain.errors import ConflictError
from gpupool.executors.local import LocalExecutor

pytestmark = pytest.mark.slow
READY_S = 120  # JupyterLab takes 2-4 s to start unloaded, 10-20 s on a busy 2-core CI machine


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServer]:
    tmp = tmp_path_factory.mktemp("notebooks")
    home = tmp / "replica-home"
    home.mkdir()
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"  # `python` = this venv's
    executor = LocalExecutor(tmp / "executor", base_env={"PATH": path, "HOME": str(home), "LANG": "C.UTF-8"})
    running = start_server(server_settings(tmp / "home", f"sqlite:///{tmp / 'gpupool.db'}", gpus="2xA100-80GB",
                                           notebook_cull_interval_s=0.5), executor)
    yield running
    with running.client() as admin:
        for notebook in admin.notebooks():
            admin.cancel(notebook.id)
        wait_until(lambda: not any(r.state in ("starting", "running") for n in admin.list_workloads(
            status=["cancelled"]).items for r in admin.get_workload(n.id).replica_list), 60, 0.2, "notebooks stopped")
    running.stop()


def ready(client: Client, notebook_id: int) -> bool:
    workload = client.get_workload(notebook_id)
    return workload.status == "running" and any(e.ready for r in workload.replica_list for e in r.endpoints)


@pytest.fixture(scope="module")
def notebook(server: TestServer) -> int:
    with server.client() as admin:
        nid = admin.submit({"kind": "notebook", "name": "main", "idle_timeout": "off",
                            "resources": {"cpu": 0.5, "memory": "1GiB", "gpu": 0.25}}).workload.id
        wait_until(lambda: ready(admin, nid), READY_S, 0.2, "the notebook ready")
    return nid


def start_when_stopped(client: Client, notebook_id: int) -> bool:
    try:
        client.start_notebook(notebook_id)
    except ConflictError as exc:
        assert "still stopping" in str(exc)
        return False
    return True


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_lab_page_and_kernel_through_the_proxy(server: TestServer, notebook: int) -> None:
    base = f"{server.url}/notebooks/{notebook}/"
    lab = httpx.get(f"{base}lab", headers=bearer(server.admin_token), timeout=60)
    assert lab.status_code == 200 and "JupyterLab" in lab.text
    kernel = start_kernel(base, bearer(server.admin_token))
    ws_url = f"ws://127.0.0.1:{server.settings.port}/notebooks/{notebook}/api/kernels/{kernel}/channels"
    assert execute(ws_url, bearer(server.admin_token), "1+1") == ("2", None)
    # JupyterLab 4's binary protocol is negotiated through the proxy; the notebook has its GPU share's env
    result, protocol = execute(ws_url, bearer(server.admin_token),
                               "import os; (os.environ['GPUPOOL_GPU_MILLI'], os.getcwd() == "
                               "os.environ['GPUPOOL_USER_DIR'], 'JUPYTER_TOKEN' in os.environ)", binary=True)
    assert (result, protocol) == ("('250', True, True)", "v1.kernel.websocket.jupyter.org")


def test_one_time_link_becomes_a_cookie_for_this_notebook_only(server: TestServer, notebook: int) -> None:
    with server.client() as admin:
        link = admin.open_notebook(notebook)
    assert link.ready and "ptoken=" in link.path
    with httpx.Client(base_url=server.url, timeout=60) as browser:
        swap = browser.get(link.path)
        assert swap.status_code == 302 and swap.headers["location"] == f"/notebooks/{notebook}/lab"
        cookie = swap.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and f"path=/notebooks/{notebook}/" in cookie
        assert browser.get(f"/notebooks/{notebook}/lab").status_code == 200  # the cookie alone opens it
        assert browser.get("/api/v1/workloads").status_code == 401  # ... and nothing else
    assert httpx.get(server.url + link.path).status_code == 401  # used once


def test_refusals(server: TestServer, notebook: int) -> None:
    base = f"{server.url}/notebooks/{notebook}"
    assert httpx.get(f"{base}/lab").status_code == 401
    with server.client() as admin:
        other = admin.create_user("olga", project="default", role="member").token
    refused = httpx.get(f"{base}/lab", headers=bearer(other))
    assert refused.status_code == 403 and "another user" in refused.json()["error"]["message"]
    evil = httpx.post(f"{base}/api/kernels", headers={**bearer(server.admin_token), "Origin": "https://evil.example"})
    assert evil.status_code == 403
    ws = f"ws://127.0.0.1:{server.settings.port}/notebooks/{notebook}/api/events/subscribe"
    for headers in ({}, bearer(other), {**bearer(server.admin_token), "Origin": "https://evil.example"}):
        with pytest.raises(InvalidStatus), connect(ws, additional_headers=headers):
            pass
    with connect(ws, additional_headers=bearer(server.admin_token)):
        pass  # the same handshake with the owner's token is accepted


def test_culled_when_idle_frees_its_gpu_and_starts_again_with_its_files(server: TestServer, notebook: int) -> None:
    with server.client() as admin:
        nid = admin.submit({"kind": "notebook", "name": "short", "idle_timeout": "6s",
                            "resources": {"cpu": 0.5, "memory": "1GiB", "gpu": 1}}).workload.id
        wait_until(lambda: ready(admin, nid), READY_S, 0.2, "the notebook ready")
        put = httpx.put(f"{server.url}/notebooks/{nid}/api/contents/kept.txt", headers=bearer(server.admin_token),
                        json={"type": "file", "format": "text", "content": "still here"})
        assert put.status_code == 201
        # the other card holds the main notebook's share: a job asking for a whole GPU waits for this one
        job = admin.submit({"name": "waits", "command": "sleep 60", "resources": {"cpu": 0.5, "gpu": 1}}).workload.id
        assert admin.get_workload(job).status == "pending"
        culled = admin.wait(nid, ["stopped"], timeout_s=60)
        idle = re.match(r"culled after (\d+)s idle; files kept", culled.message)
        assert idle is not None and 6 <= int(idle.group(1)) <= 30, culled.message
        warned = [e.at for e in culled.events if "culled in" in e.reason]
        assert len(warned) == 1 and warned[0] < culled.events[-1].at  # the warning came first, once
        admin.wait(job, ["running", "starting"], timeout_s=30)  # its GPU went to the waiting job
        assert admin.get_workload(notebook).status == "running"  # idle_timeout: off is never culled
        with pytest.raises(ConflictError):
            admin.stop_notebook(nid)
        admin.cancel(job)
        wait_until(lambda: start_when_stopped(admin, nid), 60, 0.2, "the culled notebook's Jupyter stopped")
        wait_until(lambda: ready(admin, nid), READY_S, 0.2, "the notebook ready again")
        kept = httpx.get(f"{server.url}/notebooks/{nid}/api/contents/kept.txt", headers=bearer(server.admin_token))
        assert kept.json()["content"] == "still here"
        stopped = admin.stop_notebook(nid)
        assert stopped.status == "stopped" and "stopped by admin" in stopped.message
        assert httpx.get(f"{server.url}/notebooks/{nid}/lab", headers=bearer(server.admin_token)).status_code == 409


CHROMIUM = Path("/usr/bin/chromium")
# screenshots are kept here for CI to collect (build/ is ignored by git)
ARTIFACTS = Path(os.environ.get("GPUPOOL_TEST_ARTIFACTS",
                                Path(__file__).resolve().parents[3] / "build" / "test-artifacts"))


def test_a_browser_opens_the_link_runs_a_cell_and_sees_its_output(server: TestServer, notebook: int) -> None:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("CI needs Debian's chromium for the browser tests (.ci/run installs it)")
        pytest.skip("no /usr/bin/chromium on this machine (apt-get install chromium)")
    with server.client() as admin:
        link = admin.open_notebook(notebook)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--headless=new"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.goto(server.url + link.path, timeout=90_000)
            try:
                page.locator('.jp-LauncherCard[data-category="Notebook"]').first.click(timeout=90_000)
            except Exception as exc:
                page.screenshot(path=str(ARTIFACTS / "notebook-lab-failed.png"))
                raise AssertionError(f"no launcher; failed requests: {errors}") from exc
            expect(page.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible(timeout=90_000)  # kernel up
            assert page.get_by_text("official Jupyter news").count() == 0  # no news pop-up
            editor = page.locator(".jp-Notebook .jp-Cell .cm-content").first
            editor.click(timeout=60_000)
            page.keyboard.type("21 * 2")
            page.keyboard.press("Shift+Enter")
            output = page.locator(".jp-OutputArea-output").first
            try:
                expect(output).to_have_text("42", timeout=90_000)
            except AssertionError:
                page.screenshot(path=str(ARTIFACTS / "notebook-lab-failed.png"))
                raise
            page.screenshot(path=str(ARTIFACTS / "notebook-lab.png"))
            assert errors == []
        finally:
            browser.close()


# A quarter of it is the warning window (10 s): room for the page loads done in it on a loaded 2-core machine
# (a page 0.1-1 s, the browser's a few), still under a minute of idling for the test.
WARNED_TIMEOUT = "40s"


def warned_row(console: httpx.Client, notebook_id: int) -> str | None:
    """The console's row of the notebook while it carries the culler's warning, else None."""
    rows = re.findall(r"<tr>.*?</tr>", console.get("/notebooks").text, re.S)
    row = next(r for r in rows if f'href="/workloads/{notebook_id}"' in r)
    return row if f'id="cull-warning-{notebook_id}"' in row else None


def signed_in_console(page: Page, url: str, token: str) -> None:
    page.goto(f"{url}/signin?next=%2Fnotebooks")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{url}/notebooks")


def test_the_console_shows_the_cullers_warning_until_the_notebook_is_used(server: TestServer, notebook: int) -> None:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("CI needs Debian's chromium for the browser tests (.ci/run installs it)")
        pytest.skip("no /usr/bin/chromium on this machine (apt-get install chromium)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    console = browser_for(server, server.admin_token)
    with server.client() as admin, sync_playwright() as playwright:
        nid = admin.submit({"kind": "notebook", "name": "dozing", "idle_timeout": WARNED_TIMEOUT,
                            "resources": {"cpu": 0.5, "memory": "1GiB", "gpu": 0.25}}).workload.id
        wait_until(lambda: ready(admin, nid), READY_S, 0.2, "the notebook ready")
        assert warned_row(console, nid) is None  # idle, not yet near its timeout
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--headless=new"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            signed_in_console(page, server.url, server.admin_token)  # before the window, which is short
            row = wait_until(lambda: warned_row(console, nid), 90, 0.2, "the culler's warning in the console")
            warning = next(e.reason for e in admin.get_workload(nid).events if "unless used" in e.reason)
            assert re.match(r"idle for \d+s; culled in \d+s unless used \(idle_timeout 40s\)$", warning)
            assert 'role="note"' in row and re.search(r"culls (in \d+s|soon) unless used", row) and warning in row
            listed = next(n for n in admin.notebooks() if n.id == nid).cull_warning
            assert listed is not None and listed.text == warning and "unless used" in listed.summary
            top = console.get(f"/workloads/{nid}").text
            assert re.search(r'id="cull-warning".*This notebook culls (in \d+s|soon) unless used', top, re.S)
            assert top.index('id="cull-warning"') < top.index("<h2>")  # near the top, above replicas and logs
            assert 'id="cull-warning"' not in console.get(f"/workloads/{notebook}").text  # never culled
            page.goto(f"{server.url}/notebooks")
            mark = page.get_by_role("note").filter(has_text="unless used")
            expect(mark).to_be_visible()
            expect(mark).to_contain_text(warning)  # the event's text for assistive technology too
            page.screenshot(path=str(ARTIFACTS / "notebook-cull-warning.png"))
            start_kernel(f"{server.url}/notebooks/{nid}/", bearer(server.admin_token))  # used: activity now
            wait_until(lambda: warned_row(console, nid) is None, 30, 0.2, "the warning gone once used")
            expect(mark).to_have_count(0, timeout=20_000)  # the open page's live update drops it
        finally:
            browser.close()
        assert admin.get_workload(nid).status == "running"
        admin.stop_notebook(nid)
        assert 'id="cull-warning"' not in console.get(f"/workloads/{nid}").text


def test_the_cli_lists_and_opens_notebooks(server: TestServer, notebook: int) -> None:
    env = {**os.environ, "GPUPOOL_URL": server.url, "GPUPOOL_TOKEN": server.admin_token, "COLUMNS": "200"}

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "gpupool", "notebook", *args], env=env, capture_output=True,
                              text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    listed = {n["id"]: n for n in json.loads(cli("ls", "--json"))}
    assert (listed[notebook]["status"], listed[notebook]["gpu_milli"], listed[notebook]["idle_timeout_s"]) == (
        "running", 250, 0)
    assert "main" in cli("ls") and "never" in cli("ls")
    url = cli("open", str(notebook), "--print").strip()
    assert url.startswith(f"{server.url}/notebooks/{notebook}/lab?ptoken=")
    assert httpx.get(url).status_code == 302  # a working one-time link
