"""The sweep controller pass by pass (workers off, so each pass is the test's): a crash between asking Optuna
and submitting the trial's job is repaired with the same idempotency key, `parallel` caps submitted trials,
ended jobs are told to Optuna, and every sampler and pruner a spec can name works."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from tests.support.databases import fresh_database
from tests.support.servers import TestServer, server_settings, start_server

from gpupool.client.http import Client
from gpupool.domain.specs import parse_spec
from gpupool.domain.sweeps import SweepSpec
from gpupool.optuna_space import distributions, pruner, sampler
from gpupool.server.services.sweep_study import trial_key
from gpupool.server.workers.sweeps import SweepController

SWEEP = """\
kind: sweep
name: ctl
objective: {metric: loss}
search: {x: {uniform: [0, 1]}}
algorithm: {sampler: random, seed: 1, pruner: none}
trials: 3
parallel: 2
trial: {command: sleep 1000, resources: {cpu: 0.5, memory: 64MiB}}
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestServer]:
    """A server without workers (the test runs the controller's passes) on SQLite or PostgreSQL."""
    with fresh_database(request.param, tmp_path) as url:
        running = start_server(server_settings(tmp_path / "home", url, workers=False))
        yield running
        running.stop()


def _submitted_sweep(server: TestServer, admin: Client,
                     text: str) -> tuple[SweepController, int, SweepSpec, optuna.Study]:
    """Submit the sweep `text`; its id, its spec, its study, and a controller whose passes the test runs."""
    services = server.services
    controller = SweepController(services.db, services.clock, services.sweep_studies(), services.feasibility)
    sweep_id = admin.submit(text).workload.id
    spec = parse_spec(admin.get_workload(sweep_id).spec)
    assert isinstance(spec, SweepSpec)
    return controller, sweep_id, spec, services.sweep_studies().study(sweep_id, spec)


def test_a_crash_after_asking_is_repaired_and_parallel_caps_the_trials(server: TestServer) -> None:
    with server.client() as admin:
        controller, sweep_id, spec, study = _submitted_sweep(server, admin, SWEEP)
        asked = study.ask(distributions(spec))  # the server dies here: trial 0 stored, its job never submitted
        assert controller.drive(sweep_id)
        detail = admin.sweep(sweep_id)
        assert [(t.number, t.state) for t in detail.trials] == [(0, "running"), (1, "running")]
        assert detail.trials[0].params == asked.params  # the repaired trial kept its parameters
        children = {t.number: admin.get_workload(t.workload_id) for t in detail.trials if t.workload_id}
        assert sorted(children) == [0, 1] and all(c.parent_id == sweep_id for c in children.values())
        assert admin.get_workload(sweep_id).status == "running"
        assert not controller.drive(sweep_id)  # a second pass adds nothing: 2 at once at most
        assert len(admin.sweep(sweep_id).trials) == 2
        replay = admin.submit(spec.trial_spec(0, asked.params), idempotency_key=trial_key(sweep_id, 0))
        assert not replay.created and replay.workload.id == children[0].id  # the key dedupes a replayed submit
        admin.cancel(children[0].id)  # trial 0's job ends: told failed, trial 2 is asked for
        assert controller.drive(sweep_id)
        states = [(t.number, t.state) for t in admin.sweep(sweep_id).trials]
        assert states == [(0, "fail"), (1, "running"), (2, "running")]
        admin.cancel(sweep_id)  # stopped: running trials told failed, their jobs cancelled
        assert controller.drive(sweep_id)
        ended = admin.sweep(sweep_id)
        assert [t.state for t in ended.trials] == ["fail", "fail", "fail"] and ended.best is None
        assert all(admin.get_workload(t.workload_id).status == "cancelled" for t in ended.trials if t.workload_id)
        assert not controller.drive(sweep_id)


TWO_PARAMS = SWEEP.replace("search: {x: {uniform: [0, 1]}}", "search: {x: {uniform: [0, 1]}, n: {int: [1, 9]}}")


@pytest.mark.parametrize("stored", [[], ["x"]])
def test_a_crash_inside_optunas_ask_leaves_a_trial_whose_missing_parameters_are_drawn(
        server: TestServer, stored: list[str]) -> None:
    # Optuna's ask stores the trial, then each parameter in a write of its own: a kill in between leaves a running
    # trial with some parameters or none. It must get the rest, keep what it had, and be submitted (before: the
    # trial's spec named a missing parameter, every pass failed on it, and the sweep never ended).
    with server.client() as admin:
        controller, sweep_id, spec, study = _submitted_sweep(server, admin, TWO_PARAMS)
        trial = study.ask()  # stored, no parameter yet
        kept = {name: trial._suggest(name, distributions(spec)[name]) for name in stored}  # the writes before the kill
        assert controller.drive(sweep_id)
        detail = admin.sweep(sweep_id)
        assert [(t.number, t.state) for t in detail.trials] == [(0, "running"), (1, "running")]
        params = detail.trials[0].params
        assert set(params) == {"x", "n"} and all(params[name] == value for name, value in kept.items())
        child = admin.get_workload(detail.trials[0].workload_id)
        assert child.parent_id == sweep_id and child.status != "failed"
        assert not controller.drive(sweep_id)  # nothing more: the trial keeps what it drew
        assert admin.sweep(sweep_id).trials[0].params == params


@pytest.mark.parametrize("sampler_name", ["tpe", "random", "grid", "cmaes"])
@pytest.mark.parametrize("pruner_name", ["median", "hyperband", "none"])
def test_every_sampler_and_pruner_runs_a_small_study(sampler_name: str, pruner_name: str) -> None:
    search = {"a": {"int": [1, 3]}, "b": {"choice": ["x", "y"]}}
    if sampler_name != "grid":
        search |= {"c": {"log_uniform": [0.001, 1.0]}}
    spec = parse_spec({"kind": "sweep", "objective": {"metric": "m"}, "search": search, "trials": 6,
                       "algorithm": {"sampler": sampler_name, "pruner": pruner_name, "seed": 2},
                       "trial": {"command": "true"}})
    assert isinstance(spec, SweepSpec)
    study = optuna.create_study(pruner=pruner(spec))
    for asked in range(6):
        study.sampler = sampler(spec, asked)
        trial = study.ask(distributions(spec))
        trial.report(float(trial.params["a"]), 0)
        trial.should_prune()
        study.tell(trial, float(trial.params["a"]))
    assert len(study.trials) == 6 and study.best_value >= 1
    if sampler_name == "grid":  # the grid is walked without repeats: 3 x 2 points in 6 trials
        assert len({(t.params["a"], t.params["b"]) for t in study.trials}) == 6
