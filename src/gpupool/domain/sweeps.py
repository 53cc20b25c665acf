"""Sweep specs: `kind: sweep`, a hyper-parameter search whose trials are ordinary jobs in the user's queue.

```yaml
kind: sweep
name: lr-search
project: vision
objective: {metric: val_loss, direction: minimize}
search:
  lr: {log_uniform: [1e-5, 1e-1]}
  batch: {choice: [32, 64, 128]}
  layers: {int: [2, 8]}
algorithm: {sampler: tpe, seed: 1, pruner: median}   # tpe | random | grid | cmaes ; median | hyperband | none
trials: 40
parallel: 4
trial:                                               # a job spec; {{params.X}} in command and env values
  command: python train.py --lr {{params.lr}} --batch {{params.batch}}
  resources: {gpu: 0.5}
```

Pure: parsing, checking and rendering a trial's job spec for given parameter values. The search itself (Optuna)
runs in the server.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gpupool.domain.errors import ValidationError, did_you_mean, reject_unknown_keys
from gpupool.domain.specs import (
    JobSpec,
    WorkloadKind,
    WorkloadSpec,
    parse_priority,
    parse_spec,
    validate_name,
)

PARAM_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,31}$")  # becomes GPUPOOL_PARAM_<NAME>: a short identifier
PLACEHOLDER_RE = re.compile(r"\{\{\s*params\.([A-Za-z0-9_]+)\s*\}\}")
DISTRIBUTIONS = ("log_uniform", "uniform", "int", "log_int", "choice")
SAMPLERS = ("tpe", "random", "grid", "cmaes")
PRUNERS = ("median", "hyperband", "none")
DIRECTIONS = ("minimize", "maximize")
MAX_PARAMS = 32  # far more than a search that a few hundred trials can explore
MAX_CHOICES = 256
MAX_TRIALS = 10_000  # a study of 10k trials is already slow to sample with TPE; more is a different tool
MAX_PARALLEL = 256  # bounded by the queue anyway; 256 keeps one controller pass small
MAX_STARTUP = 1000
_SWEEP_KEYS = ("kind", "name", "project", "queue", "priority", "objective", "search", "algorithm", "trials",
               "parallel", "trial", "workdir")
_TRIAL_FORBIDDEN = ("kind", "name", "project", "queue")  # a trial takes them from its sweep
_ALGORITHM_KEYS = ("sampler", "seed", "pruner", "startup_trials", "warmup_steps")
DEFAULT_STARTUP_TRIALS = 5  # Optuna's MedianPruner default: no pruning before 5 trials have finished
Scalar = str | int | float | bool


@dataclass(frozen=True, slots=True)
class Param:
    """One dimension of the search: `kind` is one of DISTRIBUTIONS; `low`/`high` bound numeric ones,
    `choices` lists a choice's values."""

    name: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple[Scalar, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """`{kind: [low, high]}` or `{choice: [...]}`, as written in a spec."""
        if self.kind == "choice":
            return {"choice": list(self.choices)}
        if self.kind in ("int", "log_int"):
            return {self.kind: [int(self.low), int(self.high)]}
        return {self.kind: [self.low, self.high]}

    def grid_values(self) -> list[Scalar]:
        """Every value of a choice or integer parameter (what the grid sampler walks); ValidationError else."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind in ("int", "log_int"):
            return list(range(int(self.low), int(self.high) + 1))
        raise ValidationError(f"the grid sampler needs choice or int parameters; {self.name} is {self.kind}",
                              f"search.{self.name}")


@dataclass(frozen=True, slots=True)
class Algorithm:
    """How to search: the sampler (seeded when `seed` is set) and the pruner (`startup_trials` finished trials
    before the median pruner prunes, none of a trial's first `warmup_steps` steps pruned)."""

    sampler: str = "tpe"
    seed: int | None = None
    pruner: str = "median"
    startup_trials: int = DEFAULT_STARTUP_TRIALS
    warmup_steps: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepSpec(WorkloadSpec):
    """A sweep: `trials` runs of the `trial` job, at most `parallel` at once, each with parameters sampled
    from `search`, minimising or maximising the last value each trial reports for `metric`. Its roles and
    command are the trial's (what one trial needs decides whether the sweep can ever run)."""

    metric: str
    direction: str
    search: tuple[Param, ...]
    algorithm: Algorithm
    trials: int
    parallel: int
    trial: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Canonical plain-data form; `parse_spec(spec.to_dict()) == spec`."""
        out: dict[str, Any] = {"kind": self.kind.value, "name": self.name}
        out |= {k: v for k, v in (("project", self.project), ("queue", self.queue)) if v is not None}
        a = self.algorithm
        algorithm: dict[str, Any] = {"sampler": a.sampler, "pruner": a.pruner, "startup_trials": a.startup_trials,
                                     "warmup_steps": a.warmup_steps}
        if a.seed is not None:
            algorithm["seed"] = a.seed
        return out | {"priority": self.priority, "objective": {"metric": self.metric, "direction": self.direction},
                      "search": {p.name: p.to_dict() for p in self.search}, "algorithm": algorithm,
                      "trials": self.trials, "parallel": self.parallel, "trial": dict(self.trial)}

    def trial_spec(self, number: int, params: Mapping[str, Scalar]) -> dict[str, Any]:
        """The job spec of trial `number` with `params` filled in: {{params.X}} in its command (shell-quoted)
        and env values (as text); named `<sweep>-t<number>`, in the sweep's project."""
        data = dict(self.trial)
        if "command" in data:
            data["command"] = render(str(data["command"]), params, quote=True)
        if isinstance(data.get("env"), Mapping):
            data["env"] = {k: render(str(v), params, quote=False) for k, v in data["env"].items()}
        data |= {"kind": "job", "name": f"{self.name[:54]}-t{number}"}
        if self.project is not None:
            data["project"] = self.project
        return data


def param_text(value: Scalar) -> str:
    """A parameter value as text: true/false for booleans, repr for floats (round-trips), str otherwise."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def render(template: str, params: Mapping[str, Scalar], quote: bool, field: str = "trial") -> str:
    """`template` with every {{params.X}} replaced by X's value (shell-quoted when `quote`); ValidationError
    naming `field` for a name that is not a parameter."""
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in params:
            raise ValidationError(f"{{{{params.{name}}}}} names no parameter{did_you_mean(name, params)}; "
                                  f"parameters: {', '.join(sorted(params))}", field)
        text = param_text(params[name])
        return shlex.quote(text) if quote else text
    return PLACEHOLDER_RE.sub(one, template)


def param_env(params: Mapping[str, Scalar]) -> dict[str, str]:
    """GPUPOOL_PARAM_<NAME> for each parameter (upper-cased name), the value as text."""
    return {f"GPUPOOL_PARAM_{name.upper()}": param_text(value) for name, value in sorted(params.items())}


# ------------------------------------------------------------------------------------------ parsing
def parse_sweep(data: dict[str, Any]) -> SweepSpec:
    """Parse a `kind: sweep` spec (see the module docstring); ValidationError naming the field otherwise."""
    reject_unknown_keys(data, _SWEEP_KEYS)
    for required in ("objective", "search", "trial", "trials"):
        if data.get(required) is None:
            raise ValidationError(f"a sweep needs {required}: (see docs/sweeps.md)", required)
    metric, direction = _parse_objective(data["objective"])
    search = _parse_search(data["search"])
    algorithm = _parse_algorithm(data.get("algorithm"))
    trials = _int(data["trials"], "trials", 1, MAX_TRIALS)
    parallel = _int(data.get("parallel", 1), "parallel", 1, MAX_PARALLEL)
    trial, job = _parse_trial(data["trial"], search, data.get("workdir"))
    if algorithm.sampler == "grid":
        size = math.prod(len(p.grid_values()) for p in search)
        if trials > size:
            raise ValidationError(f"the grid has {size} points; use trials: {size} or fewer", "trials")
    project = validate_name(data["project"], "project") if data.get("project") is not None else None
    return SweepSpec(kind=WorkloadKind.SWEEP, name=validate_name(data.get("name", "sweep"), "name"),
                     project=project, queue=validate_name(data["queue"], "queue") if data.get("queue") else None,
                     priority=parse_priority(data.get("priority", "normal")), roles=job.roles, command=job.command,
                     preemptible=job.preemptible, workdir=job.workdir, metric=metric, direction=direction,
                     search=search, algorithm=algorithm, trials=trials, parallel=parallel, trial=trial)


def _parse_objective(value: Any) -> tuple[str, str]:
    if not isinstance(value, Mapping):
        raise ValidationError("expected {metric: val_loss, direction: minimize}", "objective")
    reject_unknown_keys(dict(value), ("metric", "direction"), "objective")
    metric = value.get("metric")
    if not isinstance(metric, str) or not PARAM_NAME_RE.match(metric):
        raise ValidationError(f"expected a metric name such as val_loss (lower-case letters, digits, _), got "
                              f"{metric!r}", "objective.metric")
    direction = value.get("direction", "minimize")
    if direction not in DIRECTIONS:
        raise ValidationError(f"unknown direction {direction!r}; use minimize or maximize", "objective.direction")
    return metric, str(direction)


def _parse_search(value: Any) -> tuple[Param, ...]:
    if not isinstance(value, Mapping) or not value:
        raise ValidationError("expected a mapping of parameters, e.g. {lr: {log_uniform: [1e-5, 1e-1]}}", "search")
    if len(value) > MAX_PARAMS:
        raise ValidationError(f"{len(value)} parameters; at most {MAX_PARAMS}", "search")
    params = []
    for name in value:
        if not isinstance(name, str) or not PARAM_NAME_RE.match(name):
            raise ValidationError("a parameter name is 1-32 lower-case letters, digits or _, not starting with a "
                                  "digit", f"search.{name}")
        params.append(_parse_param(name, value[name]))
    return tuple(params)


def _parse_param(name: str, value: Any) -> Param:
    where = f"search.{name}"
    if not isinstance(value, Mapping) or len(value) != 1:
        raise ValidationError(f"expected one distribution, e.g. {{uniform: [0, 1]}}; distributions: "
                              f"{', '.join(DISTRIBUTIONS)}", where)
    ((kind, bounds),) = value.items()
    if kind not in DISTRIBUTIONS:
        raise ValidationError(f"unknown distribution {kind!r}{did_you_mean(str(kind), DISTRIBUTIONS)}; use one of "
                              f"{', '.join(DISTRIBUTIONS)}", where)
    where = f"{where}.{kind}"
    if kind == "choice":
        return Param(name, kind, choices=_parse_choices(bounds, where))
    if not isinstance(bounds, list | tuple) or len(bounds) != 2:
        raise ValidationError("expected [low, high]", where)
    whole = kind in ("int", "log_int")
    low, high = (_int(b, where, -(2**53), 2**53) if whole else _number(b, where) for b in bounds)
    if low >= high:
        raise ValidationError(f"low ({low}) must be below high ({high})", where)
    if kind.startswith("log") and low <= 0:
        raise ValidationError(f"a log distribution needs low > 0, got {low}", where)
    return Param(name, kind, float(low), float(high))


def _parse_choices(value: Any, where: str) -> tuple[Scalar, ...]:
    if not isinstance(value, list | tuple) or not value or len(value) > MAX_CHOICES:
        raise ValidationError(f"expected a list of 1..{MAX_CHOICES} values, e.g. [32, 64, 128]", where)
    for item in value:
        if not isinstance(item, str | int | float) or (isinstance(item, float) and not math.isfinite(item)):
            raise ValidationError(f"a choice is a string, number or boolean, got {item!r}", where)
    if len({(type(v), v) for v in value}) != len(value):
        raise ValidationError(f"a value is listed twice in {list(value)}", where)
    return tuple(value)


def _parse_algorithm(value: Any) -> Algorithm:
    if value is None:
        return Algorithm()
    if not isinstance(value, Mapping):
        raise ValidationError("expected {sampler: tpe, seed: 1, pruner: median}", "algorithm")
    reject_unknown_keys(dict(value), _ALGORITHM_KEYS, "algorithm")
    sampler = _pick(value.get("sampler", "tpe"), SAMPLERS, "algorithm.sampler")
    pruner = _pick(value.get("pruner", "median"), PRUNERS, "algorithm.pruner")
    seed = _int(value["seed"], "algorithm.seed", 0, 2**32 - 1) if value.get("seed") is not None else None
    startup = _int(value.get("startup_trials", DEFAULT_STARTUP_TRIALS), "algorithm.startup_trials", 0, MAX_STARTUP)
    warmup = _int(value.get("warmup_steps", 0), "algorithm.warmup_steps", 0, 10**9)
    return Algorithm(sampler, seed, pruner, startup, warmup)


def _parse_trial(value: Any, search: tuple[Param, ...], workdir: Any) -> tuple[dict[str, Any], JobSpec]:
    if not isinstance(value, Mapping):
        raise ValidationError("expected a job spec, e.g. {command: python train.py --lr {{params.lr}}}", "trial")
    data = dict(value)
    if workdir is not None and data.get("workdir") is None:  # the sweep's directory is its trials'
        data["workdir"] = workdir
    for key in _TRIAL_FORBIDDEN:
        if key in data:
            raise ValidationError("a trial takes its kind, name, project and queue from its sweep; remove it",
                                  f"trial.{key}")
    sample = {p.name: p.choices[0] if p.choices else p.low for p in search}
    probe = dict(data)
    if "command" in probe:
        probe["command"] = render(str(probe["command"]), sample, quote=True, field="trial.command")
    if isinstance(probe.get("env"), Mapping):
        probe["env"] = {k: render(str(v), sample, quote=False, field=f"trial.env.{k}") for k, v in probe["env"].items()}
    try:
        job = parse_spec({**probe, "kind": "job"})
    except ValidationError as exc:
        raise ValidationError(exc.message, f"trial.{exc.field}" if exc.field else "trial") from None
    if not isinstance(job, JobSpec):  # parse_spec of kind job gives a JobSpec; keep the type checker honest
        raise ValidationError("a trial is a job spec", "trial")
    return data, job


def _pick(value: Any, names: tuple[str, ...], where: str) -> str:
    if not isinstance(value, str) or value not in names:
        hint = did_you_mean(value, names) if isinstance(value, str) else ""
        raise ValidationError(f"unknown value {value!r}{hint}; use one of {', '.join(names)}", where)
    return value


def _int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"expected a whole number, got {value!r}", where)
    if not low <= value <= high:
        raise ValidationError(f"{value} is out of range; use {low}..{high}", where)
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, str):  # YAML reads 1e-5 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            raise ValidationError(f"expected a number, got {value!r}", where) from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValidationError(f"expected a finite number, got {value!r}", where)
    return float(value)


__all__ = ["Algorithm", "Param", "SweepSpec", "param_env", "parse_sweep", "render"]
