"""Pipelines on a real server with the local executor (real processes): a DAG with a DDP step runs in order,
its parallel branches overlap, outputs flow into `when:`; a failing step fails the run and `retry` re-runs
only what failed; cancel stops every step; bad specs are 4xx naming the field; tenancy and roles hold."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from tests.support.servers import TestServer, server_settings, start_server, wait_until
from typer.testing import CliRunner

from gpupool.api import pipeline_schemas as ps
from gpupool.cli.main import app
from gpupool.cli.pipelines import render_tree
from gpupool.client.http import Client
from gpupool.client.pipelines import PipelineClient
from gpupool.domain.errors import AuthenticationError, NotFoundError, PermissionDeniedError, ValidationError

ROOT = Path(__file__).resolve().parents[3]
PY = shlex.quote(sys.executable)
TRAIN = shlex.quote(str(ROOT / "examples" / "mnist_ddp" / "train.py"))
# one small script plays every step: it records when it ran, and does what its first argument says
STEPS_PY = '''
import json, os, sys, time
from pathlib import Path
import gpupool
run = Path(os.environ["GPUPOOL_RUN_DIR"])
what = sys.argv[1]
if what == "prepare":
    (run / "data").mkdir(exist_ok=True)
    (run / "data" / "ready").write_text("yes")
elif what == "stats":
    assert (run / "data" / "ready").exists()
    time.sleep(float(sys.argv[2]))
    gpupool.outputs(accuracy=0.93)
    gpupool.outputs(samples=128)  # merged with the first
elif what == "measure":
    gpupool.outputs(accuracy=0.93)
elif what == "publish":
    ranks = [json.loads((run / "train" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"]
    (run / "published").write_text(sys.argv[2])
elif what == "flaky":
    sys.exit(0 if (run / "fixed").exists() else 3)
elif what == "sleep":
    time.sleep(600)
'''
TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServer]:
    """One server for the module: SQLite, the local executor, a node of 4 CPUs."""
    tmp = tmp_path_factory.mktemp("pipelines")
    running = start_server(server_settings(tmp / "home", f"sqlite:///{tmp / 'gpupool.db'}"))
    (tmp / "steps.py").write_text(STEPS_PY)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def steps_py(server: TestServer) -> str:
    return shlex.quote(str(server.settings.home.parent / "steps.py"))


@pytest.fixture(scope="module")
def admin(server: TestServer) -> Iterator[Client]:
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def pipes(admin: Client) -> PipelineClient:
    return PipelineClient(admin)


def finished(pipes: PipelineClient, run_id: int, timeout_s: float = 180) -> ps.RunInfo:
    """The run once it ended."""
    return wait_until(lambda: (info := pipes.show(run_id)).status in TERMINAL and info, timeout_s, 0.2,
                      f"run {run_id} ends")


def nightly(steps_py: str) -> str:
    return f"""
kind: pipeline
name: nightly
params: {{threshold: 0.9, tag: v1}}
steps:
  prepare:
    command: {PY} {steps_py} prepare
    resources: {{cpu: 0.5}}
  train:
    needs: [prepare]
    replicas: 2
    distributed: torch
    resources: {{cpu: 1}}
    env: {{OMP_NUM_THREADS: "1"}}
    command: {PY} {TRAIN} --steps 5 --out $GPUPOOL_RUN_DIR/train
  stats:
    needs: [prepare]
    resources: {{cpu: 0.5}}
    command: {PY} {steps_py} stats 3
  publish:
    needs: [train, stats]
    when: "{{{{steps.stats.outputs.accuracy}}}} > {{{{params.threshold}}}}"
    resources: {{cpu: 0.5}}
    command: {PY} {steps_py} publish {{{{params.tag}}}}
"""


def test_a_dag_with_a_ddp_step_runs_in_order_with_overlapping_branches_and_outputs(
        admin: Client, pipes: PipelineClient, steps_py: str) -> None:
    submitted = pipes.submit(nightly(steps_py), run=True)
    assert submitted.run is not None
    info = finished(pipes, submitted.run.id)
    steps = {s.name: s for s in info.steps}
    assert info.status == "succeeded", [(s.name, s.state, s.reason) for s in info.steps]
    assert {n: s.state for n, s in steps.items()} == dict.fromkeys(("prepare", "train", "stats", "publish"),
                                                                    "succeeded")
    assert steps["stats"].outputs == {"accuracy": 0.93, "samples": 128}
    assert Path(info.run_dir, "published").read_text() == "v1"  # the param reached the command
    children = {n: admin.get_workload(s.workload_id or 0) for n, s in steps.items()}
    assert all(c.parent_id == info.id for c in children.values())
    assert children["train"].replicas == 2
    order = {n: (c.started_at or 0, c.finished_at or 0) for n, c in children.items()}
    assert order["prepare"][1] <= min(order["train"][0], order["stats"][0])  # needs come first
    assert max(order["train"][1], order["stats"][1]) <= order["publish"][0]
    # the branches ran at the same time: each started before the other finished
    assert order["train"][0] < order["stats"][1] and order["stats"][0] < order["train"][1]


def test_a_false_condition_skips_the_step_and_says_why(pipes: PipelineClient, steps_py: str) -> None:
    spec = f"""
kind: pipeline
name: gate
params: {{threshold: 0.9}}
steps:
  stats: {{command: {PY} {steps_py} measure, resources: {{cpu: 0.5}}}}
  publish:
    needs: [stats]
    when: "{{{{steps.stats.outputs.accuracy}}}} > {{{{params.threshold}}}}"
    command: {PY} {steps_py} prepare
"""
    pipes.submit(spec, run=False)
    run = pipes.run("gate", {"threshold": "0.95"})
    info = finished(pipes, run.id)
    publish = next(s for s in info.steps if s.name == "publish")
    assert info.status == "succeeded" and publish.state == "skipped"
    assert "0.93 > 0.95" in publish.reason and publish.workload_id is None


def test_a_failed_step_fails_the_run_and_retry_reruns_only_what_failed(admin: Client, pipes: PipelineClient,
                                                                      steps_py: str) -> None:
    spec = f"""
kind: pipeline
name: flaky
steps:
  a: {{command: {PY} {steps_py} prepare, resources: {{cpu: 0.5}}}}
  b: {{needs: [a], command: {PY} {steps_py} flaky, retries: 1, resources: {{cpu: 0.5}}}}
  c: {{needs: [b], command: {PY} {steps_py} prepare, resources: {{cpu: 0.5}}}}
"""
    first = pipes.submit(spec, run=True).run
    assert first is not None
    info = finished(pipes, first.id)
    states = {s.name: s.state for s in info.steps}
    assert info.status == "failed" and states == {"a": "succeeded", "b": "failed", "c": "upstream_failed"}
    b = next(s for s in info.steps if s.name == "b")
    assert admin.get_workload(b.workload_id or 0).retries_used == 1  # the step's own retries came first
    assert "exit code 3" in b.reason
    Path(info.run_dir, "fixed").write_text("")
    again = pipes.retry(first.id)
    assert again.retry_of == first.id and again.run_dir == info.run_dir
    assert pipes.retry(first.id).id == again.id  # asking twice starts one retry
    done = finished(pipes, again.id)
    assert done.status == "succeeded"
    a_old, a_new = (next(s for s in r.steps if s.name == "a") for r in (info, done))
    assert a_new.workload_id == a_old.workload_id  # a kept, not run again
    assert {s.name for s in done.steps if s.workload_id and admin.get_workload(s.workload_id).parent_id == done.id
            } == {"b", "c"}


def test_cancel_stops_every_step(admin: Client, pipes: PipelineClient, steps_py: str) -> None:
    spec = f"""
kind: pipeline
name: sleepy
steps:
  long: {{command: {PY} {steps_py} sleep, resources: {{cpu: 0.5}}}}
  after: {{needs: [long], command: {PY} {steps_py} prepare, resources: {{cpu: 0.5}}}}
"""
    run = pipes.submit(spec, run=True).run
    assert run is not None
    step = wait_until(lambda: (s := pipes.show(run.id).steps[0]).workload_id and
                      admin.get_workload(s.workload_id).status == "running" and s, 60, 0.2, "long runs")
    assert pipes.cancel(run.id).status == "cancelled"
    def all_cancelled() -> ps.RunInfo | None:
        current = pipes.show(run.id)
        return current if all(s.state == "cancelled" for s in current.steps) else None

    info = wait_until(all_cancelled, 30, 0.2, "steps cancelled")
    assert info.status == "cancelled"
    wait_until(lambda: admin.get_workload(step.workload_id).status == "cancelled", 30, 0.2, "the step's workload")
    wait_until(lambda: all(r.state != "running" for r in admin.get_workload(step.workload_id).replica_list), 30,
               0.2, "its replica stops")


@pytest.mark.parametrize(("steps", "extra", "where"), [
    ({"a": {"command": "x", "needs": ["b"]}, "b": {"command": "x", "needs": ["a"]}}, "", "steps.a.needs"),
    ({"a": {"command": "x", "needs": ["nope"]}}, "", "steps.a.needs"),
    ({"a": {"command": "x {{steps.ghost.outputs.y}}"}}, "", "steps.a.command"),
    ({"a": {"command": "x"}}, "61 * * * *", "schedule.cron"),
])
def test_bad_specs_are_refused_with_the_field(pipes: PipelineClient, steps: dict[str, object], extra: str,
                                              where: str) -> None:
    spec: dict[str, object] = {"kind": "pipeline", "name": "bad", "steps": steps}
    if extra:
        spec["schedule"] = {"cron": extra}
    with pytest.raises(ValidationError) as info:
        pipes.submit(spec)
    assert info.value.field == where
    bad_zone = {"kind": "pipeline", "name": "bad", "steps": {"a": {"command": "x"}},
                "schedule": {"cron": "0 2 * * *", "timezone": "Nowhere/City"}}
    with pytest.raises(ValidationError, match="timezone"):
        pipes.submit(bad_zone)
    with pytest.raises(ValidationError) as plain:  # not through the job submit either
        pipes.client.submit({"kind": "pipeline", "name": "x", "steps": {"a": {"command": "x"}}})
    assert plain.value.field == "kind"


def test_members_viewers_and_strangers(server: TestServer, admin: Client, pipes: PipelineClient) -> None:
    admin.create_project("vision")
    tokens = {name: admin.create_user(name, project="vision", role=role).token
              for name, role in (("alice", "member"), ("victor", "viewer"))}
    admin.create_project("nlp")
    tokens["bob"] = admin.create_user("bob", project="nlp", role="member").token
    alice, victor, bob = (PipelineClient(server.client(tokens[n])) for n in ("alice", "victor", "bob"))
    spec = {"kind": "pipeline", "name": "mine", "project": "vision", "steps": {"a": {"command": "true"}}}
    run = alice.submit(spec, run=True).run
    assert run is not None
    assert victor.show(run.id).id == run.id  # a viewer sees
    for act in (lambda: victor.run("mine"), lambda: victor.cancel(run.id), lambda: victor.pause("mine"),
                lambda: victor.submit(spec)):
        with pytest.raises(PermissionDeniedError):
            act()
    for look in (lambda: bob.show(run.id), lambda: bob.runs("mine"), lambda: bob.cancel(run.id)):
        with pytest.raises(NotFoundError):  # another project's runs look absent
            look()
    with pytest.raises(AuthenticationError):
        PipelineClient(Client(server.url, "not-a-token")).show(run.id)
    finished(pipes, run.id, 60)


def test_show_draws_the_dag_as_a_tree(pipes: PipelineClient) -> None:
    spec = {"kind": "pipeline", "name": "diamond", "steps": {
        "a": {"command": "true"}, "b": {"command": "true", "needs": ["a"]},
        "c": {"command": "true", "needs": ["a"], "when": "1 > 2"}, "d": {"command": "true", "needs": ["b", "c"]}}}
    submitted = pipes.submit(spec, run=True).run
    assert submitted is not None
    run = finished(pipes, submitted.id, 60)
    console = Console(width=200, record=True)
    console.print(render_tree(run.model_dump(mode="json")))  # the CLI draws the JSON the light client reads
    lines = console.export_text().splitlines()
    assert lines[0] == f"diamond #{run.id}"
    # a at the root, b and c under it, d under each of b and c
    depth = {line.strip("│├└─ ").split()[0]: len(line) - len(line.lstrip("│├└─ ")) for line in lines[1:]}
    assert depth["a"] < depth["b"] == depth["c"] < depth["d"]
    assert sum(1 for line in lines if line.strip("│├└─ ").startswith("d ")) == 2
    assert any(line.strip("│├└─ ").startswith("c skipped") for line in lines)
    assert any(line.strip("│├└─ ").startswith("d succeeded") for line in lines)


def test_the_cli_submits_runs_shows_and_lists(server: TestServer, tmp_path: Path) -> None:
    runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "GPUPOOL_URL": server.url,
                            "GPUPOOL_TOKEN": server.admin_token})
    spec = tmp_path / "cli.yaml"
    spec.write_text("kind: pipeline\nname: cli\nparams: {n: 1}\nsteps:\n  a:\n    command: echo {{params.n}}\n")
    stored = runner.invoke(app, ["pipeline", "submit", str(spec), "--no-run"])
    assert stored.exit_code == 0 and "pipeline cli stored in project default" in stored.stdout
    started = runner.invoke(app, ["pipeline", "run", "cli", "-p", "n=2", "--json"])
    assert started.exit_code == 0, started.output
    run_id = json.loads(started.stdout)["id"]
    assert json.loads(started.stdout)["params"] == {"n": 2}
    wait_until(lambda: "succeeded" in runner.invoke(app, ["pipeline", "show", str(run_id)]).stdout, 60, 0.3,
               "the cli run ends")
    shown = runner.invoke(app, ["pipeline", "show", str(run_id)]).stdout
    assert f"cli #{run_id}" in shown and "a succeeded" in shown
    listed = runner.invoke(app, ["pipeline", "runs", "cli"]).stdout
    assert str(run_id) in listed and "1/1" in listed
    bad = runner.invoke(app, ["pipeline", "run", "cli", "-p", "m=1", "--json"])
    assert bad.exit_code != 0 and json.loads(bad.stdout)["error"]["field"] == "params.m"
    retry = runner.invoke(app, ["pipeline", "retry", str(run_id)])
    assert retry.exit_code != 0 and "only failed or cancelled runs can be retried" in retry.output
