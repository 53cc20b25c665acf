"""Sweep specs: search spaces, algorithm, objective, the trial's job spec and its rendering."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gpupool.domain.errors import ValidationError
from gpupool.domain.lifecycle import CONTROLLER_KINDS, WorkloadView, lifecycle_for
from gpupool.domain.specs import WorkloadKind, parse_spec
from gpupool.domain.status import WorkloadStatus
from gpupool.domain.sweeps import SweepSpec, param_env


def sweep(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "kind": "sweep", "name": "lr-search", "objective": {"metric": "val_loss", "direction": "minimize"},
        "search": {"lr": {"log_uniform": [1e-5, 1e-1]}, "batch": {"choice": [32, 64, 128]}, "layers": {"int": [2, 8]}},
        "algorithm": {"sampler": "tpe", "seed": 1, "pruner": "median"}, "trials": 40, "parallel": 4,
        "trial": {"command": "python train.py --lr {{params.lr}} --batch {{ params.batch }}",
                  "resources": {"gpu": 0.5}, "env": {"LAYERS": "{{params.layers}}"}}}
    return base | fields


def test_the_issue_example_parses_and_round_trips() -> None:
    spec = parse_spec(sweep())
    assert isinstance(spec, SweepSpec) and spec.kind == WorkloadKind.SWEEP
    assert [(p.name, p.kind, p.low, p.high) for p in spec.search] == [
        ("lr", "log_uniform", 1e-5, 1e-1), ("batch", "choice", 0.0, 0.0), ("layers", "int", 2.0, 8.0)]
    assert (spec.metric, spec.direction, spec.trials, spec.parallel) == ("val_loss", "minimize", 40, 4)
    assert spec.algorithm.sampler == "tpe" and spec.algorithm.seed == 1 and spec.algorithm.pruner == "median"
    assert spec.roles[0].resources.gpu.share_milli == 500  # the trial's request: what the queue sees
    assert parse_spec(spec.to_dict()) == spec


def test_a_trial_spec_renders_its_parameters_into_command_and_env() -> None:
    spec = parse_spec(sweep(project="vision"))
    assert isinstance(spec, SweepSpec)
    job = spec.trial_spec(7, {"lr": 0.001, "batch": 64, "layers": 3})
    assert job["command"] == "python train.py --lr 0.001 --batch 64"
    assert job["env"] == {"LAYERS": "3"}
    assert (job["kind"], job["name"], job["project"]) == ("job", "lr-search-t7", "vision")
    parsed = parse_spec(job)  # what the controller submits is an ordinary job
    assert parsed.kind == WorkloadKind.JOB and parsed.roles[0].resources.gpu.share_milli == 500


def test_choice_strings_are_shell_quoted_in_the_command_only() -> None:
    spec = parse_spec(sweep(search={"opt": {"choice": ["adam", "sgd; rm -rf /"]}},
                            trial={"command": "train --opt {{params.opt}}", "env": {"OPT": "{{params.opt}}"}}))
    assert isinstance(spec, SweepSpec)
    job = spec.trial_spec(0, {"opt": "sgd; rm -rf /"})
    assert job["command"] == "train --opt 'sgd; rm -rf /'"
    assert job["env"] == {"OPT": "sgd; rm -rf /"}


def test_parameters_become_gpupool_param_variables() -> None:
    assert param_env({"lr": 0.5, "batch": 64, "amp": True}) == {
        "GPUPOOL_PARAM_AMP": "true", "GPUPOOL_PARAM_BATCH": "64", "GPUPOOL_PARAM_LR": "0.5"}


def test_defaults_one_at_a_time_tpe_median() -> None:
    data = sweep()
    del data["algorithm"], data["parallel"]
    spec = parse_spec(data)
    assert isinstance(spec, SweepSpec)
    assert (spec.parallel, spec.algorithm.sampler, spec.algorithm.pruner, spec.algorithm.seed) == (1, "tpe", "median",
                                                                                                    None)


@pytest.mark.parametrize(("change", "field", "message"), [
    ({"search": {"lr": {"uniform": [0.1, 0.1]}}}, "search.lr.uniform", "low (0.1) must be below high (0.1)"),
    ({"search": {"lr": {"log_uniform": [1, 0.5]}}}, "search.lr.log_uniform", "must be below high"),
    ({"search": {"lr": {"log_uniform": [0, 1]}}}, "search.lr.log_uniform", "needs low > 0"),
    ({"search": {"n": {"int": [1.5, 3]}}}, "search.n.int", "expected a whole number"),
    ({"search": {"lr": {"loguniform": [1e-5, 1]}}}, "search.lr", 'did you mean "log_uniform"'),
    ({"search": {"lr": {"normal": [0, 1]}}}, "search.lr", "unknown distribution 'normal'"),
    ({"search": {"lr": {"choice": []}}}, "search.lr.choice", "expected a list of 1..256 values"),
    ({"search": {"lr": {"choice": [1, 1]}}}, "search.lr.choice", "listed twice"),
    ({"search": {"Bad-Name": {"choice": [1]}}}, "search.Bad-Name", "a parameter name"),
    ({"search": {}}, "search", "expected a mapping of parameters"),
    ({"objective": {"metric": "loss", "direction": "down"}}, "objective.direction", "use minimize or maximize"),
    ({"algorithm": {"sampler": "tpee"}}, "algorithm.sampler", 'did you mean "tpe"'),
    ({"algorithm": {"pruner": "asha"}}, "algorithm.pruner", "use one of median, hyperband, none"),
    ({"trials": 0}, "trials", "out of range"),
    ({"parallel": 1000}, "parallel", "out of range"),
    ({"trial": {"command": "train --x {{params.x}}"}}, "trial.command", "{{params.x}} names no parameter"),
    ({"trial": {"command": "t", "env": {"X": "{{params.x}}"}}}, "trial.env.X", "{{params.x}} names no parameter"),
    ({"trial": {"command": "train", "name": "x"}}, "trial.name", "takes its kind, name, project and queue"),
    ({"trial": {"command": "train", "replicas": 0}}, "trial.replicas", "out of range"),
    ({"trial": {"command": "train", "env": {"GPUPOOL_PARAM_LR": "1"}}}, "trial.env.GPUPOOL_PARAM_LR", "gpupool sets"),
    ({"algorithm": {"sampler": "grid"}}, "search.lr", "grid sampler needs choice or int parameters"),
    ({"searhc": {}}, "searhc", 'did you mean "search"'),
])
def test_bad_sweeps_name_the_field(change: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_spec(sweep(**change))
    assert caught.value.field == field
    assert message in caught.value.message


def test_a_grid_sweep_has_at_most_as_many_trials_as_grid_points() -> None:
    grid = {"search": {"a": {"choice": [1, 2, 3]}, "b": {"int": [0, 1]}}, "algorithm": {"sampler": "grid"},
            "trial": {"command": "train --a {{params.a}} --b {{params.b}}"}}
    assert isinstance(parse_spec(sweep(**grid, trials=6)), SweepSpec)  # 3 x 2 points
    with pytest.raises(ValidationError, match="the grid has 6 points") as caught:
        parse_spec(sweep(**grid, trials=7))
    assert caught.value.field == "trials"


def test_a_sweep_is_a_controller_with_a_lifecycle_that_leaves_it_to_its_controller() -> None:
    assert "sweep" in CONTROLLER_KINDS
    assert lifecycle_for("sweep").advance(WorkloadView(WorkloadStatus.RUNNING, ()), 0.0) is None


def test_the_mnist_example_sweep_searches_the_learning_rate() -> None:
    path = Path(__file__).resolve().parents[3] / "examples" / "mnist_ddp" / "sweep.yaml"
    spec = parse_spec(yaml.safe_load(path.read_text()))
    assert isinstance(spec, SweepSpec) and [p.name for p in spec.search] == ["lr"]
    job = parse_spec(spec.trial_spec(0, {"lr": 0.1}))
    assert job.command == "python train.py --steps 30 --lr 0.1" and job.replica_count == 2
