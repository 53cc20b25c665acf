"""Sweeps with real `gpupool up` processes and real trial processes: a quadratic objective searched by Optuna
(best within tolerance, never more than `parallel` at once, exactly N trials across a kill -9 of the server),
pruning that stops processes, trial reports that reach only their own trial, and the CLI."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.support.processes import ServerProcess, run_cli, run_json
from tests.support.servers import wait_until

from gpupool.client.http import Client
from gpupool.domain.errors import AuthenticationError, NotFoundError, PermissionDeniedError, ValidationError

# A trial: reads its parameter from GPUPOOL_PARAM_X (and --x, rendered from {{params.x}}), records when its
# process started and ended, reports `steps` values of loss = (x - 1.5)^2 (0 with FLAT set), plus 100 for the
# trials listed in BAD (more than (x - 1.5)^2 can be on [-5, 5]), and ignores should_prune(): a pruned trial
# must be stopped by the server, not by itself.
TRIAL = textwrap.dedent("""
    import os, sys, time
    import gpupool
    out, steps, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    x = float(sys.argv[5])
    assert x == float(os.environ["GPUPOOL_PARAM_X"])
    n = int(os.environ["GPUPOOL_TRIAL"])
    bad = [int(b) for b in os.environ.get("BAD", "").split(",") if b]
    base = 0.0 if os.environ.get("FLAT") else (x - 1.5) ** 2
    with open(f"{out}/{n}.start", "a") as f:
        f.write(f"{time.time()} {os.getpid()}\\n")
    if n in bad:
        pause = 1.0  # long enough that only the server's stop can end it before its last step
    for step in range(steps):
        gpupool.report(step, loss=base + (100.0 if n in bad else 0.0), other=step)
        time.sleep(pause)
    with open(f"{out}/{n}.end", "w") as f:
        f.write(f"{time.time()}\\n")
""")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module: 8 CPUs (room for more trials than any sweep here runs at once) and two
    simulated GPUs, shared (fractions of a GPU)."""
    home = tmp_path_factory.mktemp("sweeps") / "home"
    process = ServerProcess(home, ["--cpus", "8", "--memory", "16GiB", "--gpus", "2xA100-80GB"])
    process.start()
    yield process
    process.stop()
    process.stop_replicas()


def _script(tmp: Path) -> Path:
    path = tmp / "trial.py"
    path.write_text(TRIAL)
    (tmp / "out").mkdir()
    return path


def _spec(name: str, tmp: Path, *, trials: int, parallel: int, steps: int, pause: float, algorithm: str,
          env: str = "{}", resources: str = "{cpu: 0.5, memory: 128MiB}") -> str:
    return textwrap.dedent(f"""\
        kind: sweep
        name: {name}
        objective: {{metric: loss, direction: minimize}}
        search:
          x: {{uniform: [-5, 5]}}
        algorithm: {algorithm}
        trials: {trials}
        parallel: {parallel}
        trial:
          command: {sys.executable} {tmp / 'trial.py'} {tmp / 'out'} {steps} {pause} --x {{{{params.x}}}}
          resources: {resources}
          env: {env}
        """)


def _intervals(out: Path) -> dict[int, tuple[float, float | None, int]]:
    """trial number -> (process start, end or None, pid); fails when a trial's process started twice."""
    found = {}
    for start in out.glob("*.start"):
        lines = start.read_text().splitlines()
        assert len(lines) == 1, f"trial {start.stem} ran {len(lines)} times"
        began, pid = lines[0].split()
        end = out / f"{start.stem}.end"
        found[int(start.stem)] = (float(began), float(end.read_text()) if end.exists() else None, int(pid))
    return found


def _most_at_once(intervals: dict[int, tuple[float, float | None, int]]) -> int:
    events = sorted([(b, 1) for b, _, _ in intervals.values()] + [(e, -1) for _, e, _ in intervals.values() if e])
    level = peak = 0
    for _, delta in events:  # an end sorts before a start at the same instant
        level += delta
        peak = max(peak, level)
    return peak


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_a_quadratic_sweep_finds_the_optimum_with_exactly_30_trials_across_a_server_kill(
        server: ServerProcess, tmp_path: Path) -> None:
    """30 trials, 3 at once, of (x - 1.5)^2 on [-5, 5], with TPE. Tolerance: the best x within 0.5 of 1.5 (value
    below 0.25): uniform random sampling alone gets there in 30 draws with probability 1 - 0.9^30 = 0.96; TPE
    concentrates its draws near the optimum after its 10 random start-up trials."""
    _script(tmp_path)
    spec = tmp_path / "sweep.yaml"
    spec.write_text(_spec("quad", tmp_path, trials=30, parallel=3, steps=1, pause=0.05,
                          algorithm="{sampler: tpe, seed: 7, pruner: none}"))
    submitted = run_json(["sweep", "submit", str(spec)], server.env)
    assert isinstance(submitted, dict)
    sweep_id = submitted["workload"]["id"]
    with server.client() as admin:
        wait_until(lambda: sum(t.state == "complete" for t in admin.sweep(sweep_id).trials) >= 8, 120, 0.5,
                   "8 trials completed")  # polled every 0.5 s: each look reads the study
    server.kill()  # kill -9 mid-sweep; the trials' processes live on and wait for the server to come back
    server.start()
    with server.client() as admin:
        done = admin.wait(sweep_id, timeout_s=240)
        detail = admin.sweep("quad")
    assert done.status == "succeeded", done.message
    assert [t.number for t in detail.trials] == list(range(30))
    assert len({t.workload_id for t in detail.trials}) == 30
    ran = _intervals(tmp_path / "out")
    assert sorted(ran) == list(range(30))  # every trial's process ran exactly once (checked in _intervals)
    assert _most_at_once(ran) <= 3
    assert all(t.state == "complete" and t.status == "succeeded" for t in detail.trials)
    assert detail.best is not None and detail.best.value is not None and detail.best.value < 0.25
    assert abs(detail.best.params["x"] - 1.5) < 0.5
    assert detail.best.value == min(t.value for t in detail.trials if t.value is not None)
    best = run_json(["sweep", "best", "quad"], server.env)
    assert isinstance(best, dict)
    assert (best["trial"], best["value"], best["params"]) == (detail.best.number, detail.best.value,
                                                             detail.best.params)
    shown = run_cli(["sweep", "show", "quad", "--plot", str(tmp_path / "plot.png")], server.env).stdout
    assert "best: trial" in shown and "30 of 30 trials ended" in shown
    assert "optimisation history, parameter importances, parallel coordinates" in shown
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trials_with_clearly_worse_curves_are_pruned_and_their_processes_stopped(
        server: ServerProcess, tmp_path: Path) -> None:
    """Three trials at a time; trials 2 and 4 report a loss of 100 every second, the others 0 at once. The
    median pruner (2 start-up trials; it prunes a value strictly above the median) stops the bad ones at their
    first report after two trials completed; the others complete."""
    _script(tmp_path)
    with server.client() as admin:
        sweep_id = admin.submit(_spec("prune", tmp_path, trials=5, parallel=3, steps=10, pause=0.02,
                                      algorithm="{sampler: random, seed: 3, pruner: median, startup_trials: 2}",
                                      env="{BAD: '2,4', FLAT: '1'}")).workload.id
        done = admin.wait(sweep_id, timeout_s=180)
        detail = admin.sweep(sweep_id)
    assert done.status == "succeeded", done.message
    states = {t.number: t.state for t in detail.trials}
    assert states == {0: "complete", 1: "complete", 2: "pruned", 3: "complete", 4: "pruned"}
    ran = _intervals(tmp_path / "out")
    for number in (2, 4):
        trial = detail.trials[number]
        assert trial.status == "cancelled" and trial.message.startswith("pruned at step")
        assert trial.last_step is not None and trial.last_step < 9
        _began, ended, pid = ran[number]
        assert ended is None  # it never reached its end: the server stopped it
        wait_until(lambda pid=pid: not _alive(pid), 10, 0.1, f"trial {number}'s process gone")
    assert all(ran[n][1] is not None for n in (0, 1, 3))


def test_a_stopped_sweep_stops_its_trials_and_starts_no_more(server: ServerProcess, tmp_path: Path) -> None:
    _script(tmp_path)
    spec = tmp_path / "sweep.yaml"
    spec.write_text(_spec("stopme", tmp_path, trials=20, parallel=2, steps=200, pause=0.1,
                          algorithm="{sampler: random, pruner: none}"))
    sweep_id = run_json(["sweep", "submit", str(spec)], server.env)["workload"]["id"]  # type: ignore[index]
    with server.client() as admin:
        wait_until(lambda: len(_intervals(tmp_path / "out")) == 2, 60, 0.1, "two trials running")
        stopped = run_json(["sweep", "stop", "stopme"], server.env)
        assert isinstance(stopped, dict) and stopped["status"] == "cancelled"
        wait_until(lambda: all(t.state == "fail" and t.status == "cancelled" for t in admin.sweep(sweep_id).trials),
                   30, 0.2, "trials told failed and cancelled")
        time.sleep(1)  # a controller pass that wrongly asked for more would have done so by now
        assert len(admin.sweep(sweep_id).trials) == 2
    for _, _, pid in _intervals(tmp_path / "out").values():
        wait_until(lambda pid=pid: not _alive(pid), 10, 0.1, "trial process gone")


@pytest.mark.parametrize(("search", "field", "message"), [
    ({"x": {"uniform": [1, 1]}}, "search.x.uniform", "low (1.0) must be below high (1.0)"),
    ({"x": {"gaussian": [0, 1]}}, "search.x", "unknown distribution 'gaussian'"),
])
def test_bad_search_spaces_are_refused_naming_the_field(server: ServerProcess, search: dict[str, object], field: str,
                                                       message: str) -> None:
    spec = {"kind": "sweep", "objective": {"metric": "loss"}, "trials": 2, "trial": {"command": "true"}}
    response = httpx.post(f"{server.url}/api/v1/workloads", json={"spec": {**spec, "search": search}},
                          headers={"Authorization": f"Bearer {(server.home / 'token').read_text().strip()}"})
    assert response.status_code == 422
    body = response.json()
    assert body["error"]["field"] == field and message in body["error"]["message"]


def test_a_trial_reports_only_to_its_own_trial_and_viewers_only_look(server: ServerProcess, tmp_path: Path) -> None:
    _script(tmp_path)
    with server.client() as admin:
        admin.create_project("hpo")
        owner = admin.create_user("hpo-owner", project="hpo").token
        viewer = admin.create_user("hpo-viewer", project="hpo", role="viewer").token
        stranger = admin.create_user("hpo-stranger").token
    with Client(server.url, owner) as client:
        text = _spec("guarded", tmp_path, trials=2, parallel=2, steps=600, pause=0.1,
                     algorithm="{sampler: random, pruner: none}").replace("kind: sweep", "kind: sweep\nproject: hpo")
        sweep_id = client.submit(text).workload.id
        wait_until(lambda: all(t.workload_id for t in client.sweep(sweep_id).trials) and
                   len(client.sweep(sweep_id).trials) == 2, 60, 0.1, "two trial jobs")
        first, second = (t.workload_id for t in client.sweep(sweep_id).trials)
    report = f"{server.url}/api/v1/sweeps/trials/{first}/report?step=1&metric=loss=1"
    assert httpx.post(report).status_code == 401  # no trial token
    assert httpx.post(report, headers={"X-Gpupool-Trial-Token": "0" * 64}).status_code == 401
    assert httpx.post(report, headers={"Authorization": f"Bearer {owner}"}).status_code == 401  # a user token
    assert second is not None
    with Client(server.url, viewer) as looking:
        assert looking.sweep("guarded").id == sweep_id
        with pytest.raises(PermissionDeniedError):
            looking.cancel(sweep_id)
    with Client(server.url, stranger) as other, pytest.raises(NotFoundError):
        other.sweep(sweep_id)
    with Client(server.url, "not-a-token") as nobody, pytest.raises(AuthenticationError):
        nobody.sweep(sweep_id)
    with Client(server.url, owner) as client:
        client.cancel(sweep_id)
        with pytest.raises(ValidationError):
            client.sweep("Not A Name")


def test_a_trial_token_opens_its_own_trial_only(server: ServerProcess, tmp_path: Path) -> None:
    """A trial's job gets its token; with it, it can report to itself, and not to another trial."""
    (tmp_path / "out").mkdir()
    spy = tmp_path / "spy.py"
    spy.write_text(textwrap.dedent(f"""
        import os, httpx, json
        url, me = os.environ["GPUPOOL_URL"], int(os.environ["GPUPOOL_WORKLOAD_ID"])
        h = {{"X-Gpupool-Trial-Token": os.environ["GPUPOOL_TRIAL_TOKEN"]}}
        own = httpx.post(f"{{url}}/api/v1/sweeps/trials/{{me}}/report?step=0&metric=loss=1", headers=h)
        other = httpx.post(f"{{url}}/api/v1/sweeps/trials/{{me - 1 if me > 1 else me + 1}}/report?step=0"
                           "&metric=loss=1", headers=h)
        open("{tmp_path}/out/" + os.environ["GPUPOOL_TRIAL"], "w").write(json.dumps([own.status_code,
                                                                                    other.status_code]))
    """))
    with server.client() as admin:
        sweep_id = admin.submit(textwrap.dedent(f"""\
            kind: sweep
            name: spy
            objective: {{metric: loss}}
            search: {{x: {{choice: [1]}}}}
            algorithm: {{sampler: random, pruner: none}}
            trials: 1
            trial: {{command: {sys.executable} {spy}, resources: {{cpu: 0.5, memory: 128MiB}}}}
            """)).workload.id
        assert admin.wait(sweep_id, timeout_s=60).status == "succeeded"
    assert json.loads((tmp_path / "out" / "0").read_text()) == [200, 401]


def test_trials_asking_for_gpu_shares_wait_in_their_queue_at_its_limit(server: ServerProcess, tmp_path: Path) -> None:
    """Half-GPU trials, 4 allowed at once by the sweep, in a queue limited to 1 GPU: 2 run at once, the others
    wait in the queue saying why."""
    _script(tmp_path)
    with server.client() as admin:
        admin.create_project("gpuq")
        admin.update_queue("gpuq", limit={"gpu": 1})
        text = _spec("shares", tmp_path, trials=4, parallel=4, steps=4, pause=0.4,
                     algorithm="{sampler: random, pruner: none}", resources="{cpu: 0.5, memory: 128MiB, gpu: 0.5}")
        sweep_id = admin.submit(text.replace("kind: sweep", "kind: sweep\nproject: gpuq")).workload.id
        reasons: set[str] = set()

        def ended() -> bool:
            page = admin.list_workloads(project="gpuq", status=["pending"])
            reasons.update(w.pending_reason or "" for w in page.items if w.kind == "job")
            return admin.get_workload(sweep_id).status == "succeeded"

        wait_until(ended, 120, 0.1, "the sweep succeeded")
    assert _most_at_once(_intervals(tmp_path / "out")) <= 2
    assert any("limit" in reason for reason in reasons), reasons
