"""`kind: pipeline`: a DAG of steps, each an ordinary job, parsed and validated at submission.

```yaml
kind: pipeline
name: nightly-train
project: vision
schedule: {cron: "0 2 * * *", timezone: Asia/Shanghai, catch_up: latest, concurrency: forbid}
params: {epochs: 3}
steps:
  prepare:  {command: python prep.py --out $GPUPOOL_RUN_DIR/data}
  train:    {needs: [prepare], replicas: 2, distributed: torch, command: python train.py --epochs {{params.epochs}}}
  evaluate: {needs: [train], command: python eval.py}
  publish:  {needs: [evaluate], when: "{{steps.evaluate.outputs.accuracy}} > 0.9", command: ./publish.sh}
```

Each step is a job spec (everything `kind: job` takes) plus `needs` (the steps it waits for) and `when`
(a condition, see `gpupool.domain.conditions`). Commands and env values may use `{{params.X}}` and
`{{steps.S.outputs.Y}}`; S must be a step the step needs (directly or through others), so its outputs exist
when the step starts. Validation names the field: unknown steps, cycles (with the steps on the cycle),
templates naming unknown params or steps, a bad cron line or timezone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter  # type: ignore[import-untyped]  # (no type stubs)

from gpupool.domain.conditions import Condition, parse_condition
from gpupool.domain.errors import ValidationError, did_you_mean, reject_unknown_keys
from gpupool.domain.specs import JobSpec, WorkloadKind, WorkloadSpec, parse_priority, parse_spec, validate_name

# Steps and params are read by people from `gpupool pipeline show`: 64 steps is several times the largest
# pipelines in the examples this was designed from (a nightly chain of 4-10 steps), and bounds a run's work.
MAX_STEPS = 64
MAX_PARAMS = 64
MAX_PARAM_CHARS = 1024
MAX_CATCH_UP_LIMIT = 100  # `catch_up: all` runs at most this many missed fires (a day of 15-minute fires)
DEFAULT_MAX_CATCH_UP = 10  # enough for a weekend of a nightly schedule without flooding the queue
TEMPLATE_RE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
PARAM_REF_RE = re.compile(r"^params\.([A-Za-z_][A-Za-z0-9_]*)$")
OUTPUT_REF_RE = re.compile(r"^steps\.([a-z0-9_-]+)\.outputs\.([A-Za-z_][A-Za-z0-9_]*)$")
_PIPELINE_KEYS = ("kind", "name", "project", "queue", "priority", "schedule", "params", "steps")
_STEP_ONLY_KEYS = ("needs", "when")
_SCHEDULE_KEYS = ("cron", "timezone", "catch_up", "max_catch_up", "concurrency")
CATCH_UP = ("none", "latest", "all")
CONCURRENCY = ("allow", "forbid", "replace")
Scalar = str | int | float | bool


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """When a pipeline runs by itself: a cron line read in `timezone`; `catch_up` says which fires missed
    while the server was down still run (none, the latest, or all up to `max_catch_up`); `concurrency` what
    a fire does while the previous run still goes (allow a second, forbid it (recorded as skipped), replace
    it (cancel the old one))."""

    cron: str
    timezone: str = "UTC"
    catch_up: str = "latest"
    max_catch_up: int = DEFAULT_MAX_CATCH_UP
    concurrency: str = "forbid"

    def to_dict(self) -> dict[str, Any]:
        """Canonical plain-data form."""
        return {"cron": self.cron, "timezone": self.timezone, "catch_up": self.catch_up,
                "max_catch_up": self.max_catch_up, "concurrency": self.concurrency}


@dataclass(frozen=True, slots=True)
class StepSpec:
    """One step: its job (`job`, parsed with the templates still in it), what it needs, its condition."""

    name: str
    job: Mapping[str, Any]
    needs: tuple[str, ...] = ()
    when: Condition | None = None

    def to_dict(self) -> dict[str, Any]:
        """The step as written: its job fields plus needs and when."""
        out = {k: v for k, v in self.job.items() if k not in ("kind", "name", "project", "queue")}
        if self.needs:
            out["needs"] = list(self.needs)
        if self.when is not None:
            out["when"] = self.when.text
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineSpec(WorkloadSpec):
    """A pipeline: its steps in topological order (ties by name), default params, optional schedule.
    A pipeline run is a controller workload: it has no replicas of its own (`roles` is empty)."""

    steps: tuple[StepSpec, ...] = ()
    params: Mapping[str, Scalar] = field(default_factory=lambda: MappingProxyType({}))
    schedule: ScheduleSpec | None = None

    def step(self, name: str) -> StepSpec:
        """The step called `name` (KeyError otherwise)."""
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Canonical plain-data form; `parse_spec(spec.to_dict()) == spec`."""
        out: dict[str, Any] = {"kind": self.kind.value, "name": self.name}
        out |= {k: v for k, v in (("project", self.project), ("queue", self.queue)) if v is not None}
        out["priority"] = self.priority
        if self.schedule is not None:
            out["schedule"] = self.schedule.to_dict()
        if self.params:
            out["params"] = dict(self.params)
        out["steps"] = {s.name: s.to_dict() for s in self.steps}
        return out


def parse_pipeline(data: dict[str, Any]) -> PipelineSpec:
    """Parse a `kind: pipeline` spec (see the module); ValidationError naming the field otherwise."""
    reject_unknown_keys(data, _PIPELINE_KEYS)
    name = validate_name(data.get("name", "pipeline"), "name")
    project = validate_name(data["project"], "project") if data.get("project") is not None else None
    queue = validate_name(data["queue"], "queue") if data.get("queue") is not None else None
    priority = parse_priority(data.get("priority", "normal"))
    params = parse_params(data.get("params"), "params")
    steps_data = data.get("steps")
    if not isinstance(steps_data, Mapping) or not steps_data:
        raise ValidationError("expected a mapping of steps, e.g. steps: {train: {command: python train.py}}",
                              "steps")
    if len(steps_data) > MAX_STEPS:
        raise ValidationError(f"{len(steps_data)} steps; at most {MAX_STEPS}", "steps")
    steps = {str(n): _parse_step(n, v, project, queue, priority) for n, v in steps_data.items()}
    ordered = topological_order({n: s.needs for n, s in steps.items()})
    _check_templates(steps, params)
    schedule = parse_schedule(data["schedule"]) if data.get("schedule") is not None else None
    return PipelineSpec(kind=WorkloadKind.PIPELINE, name=name, project=project, queue=queue, priority=priority,
                        roles=(), steps=tuple(steps[n] for n in ordered), params=params, schedule=schedule)


def parse_params(value: Any, where: str) -> Mapping[str, Scalar]:
    """Params: a mapping of name -> string, number or boolean."""
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping) or len(value) > MAX_PARAMS:
        raise ValidationError(f"expected a mapping of at most {MAX_PARAMS} params, e.g. params: {{epochs: 3}}", where)
    out: dict[str, Scalar] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValidationError(f"{key!r} is not a valid param name (letters, digits, _)", where)
        if not isinstance(item, str | int | float | bool) or len(str(item)) > MAX_PARAM_CHARS:
            raise ValidationError(f"expected a string, number or boolean of at most {MAX_PARAM_CHARS} characters",
                                  f"{where}.{key}")
        out[key] = item
    return MappingProxyType(out)


def _parse_step(name: Any, value: Any, project: str | None, queue: str | None, priority: int) -> StepSpec:
    where = f"steps.{name}"
    step_name = validate_name(name, where)
    if not isinstance(value, Mapping):
        raise ValidationError("expected a job spec, e.g. {command: python train.py, needs: [prepare]}", where)
    job = {k: v for k, v in value.items() if k not in _STEP_ONLY_KEYS}
    for key in ("kind", "name", "project", "queue"):
        if key in job:
            raise ValidationError(f"a step takes its {key} from the pipeline; remove it", f"{where}.{key}")
    job = {"kind": "job", "name": step_name, "priority": priority, **job}
    job |= {k: v for k, v in (("project", project), ("queue", queue)) if v is not None}
    try:
        parsed = parse_spec(job)
    except ValidationError as exc:
        raise ValidationError(exc.detail, f"{where}.{exc.field}" if exc.field else where) from None
    if not isinstance(parsed, JobSpec):  # parse_spec of kind job gives a JobSpec; keep the type checker honest
        raise ValidationError("a step is a job", where)
    needs_value = value.get("needs", [])
    if isinstance(needs_value, str):
        needs_value = [needs_value]
    if not isinstance(needs_value, list) or not all(isinstance(n, str) for n in needs_value):
        raise ValidationError("expected a list of step names, e.g. needs: [prepare]", f"{where}.needs")
    when_value = value.get("when")
    when = None
    if when_value is not None:
        if not isinstance(when_value, str):
            raise ValidationError("expected a condition such as \"{{steps.evaluate.outputs.accuracy}} > 0.9\"",
                                  f"{where}.when")
        when = parse_condition(when_value, f"{where}.when")
    return StepSpec(step_name, MappingProxyType(parsed.to_dict()), tuple(dict.fromkeys(needs_value)), when)


def topological_order(needs: Mapping[str, tuple[str, ...]]) -> list[str]:
    """The steps in an order where each comes after what it needs (ties broken by name, so the order is
    stable). ValidationError naming the step and field for an unknown need, and the steps of a cycle."""
    names = sorted(needs)
    for name in names:
        for need in needs[name]:
            if need not in needs:
                raise ValidationError(f"step {name} needs {need!r}, which is not a step{did_you_mean(need, names)}; "
                                      f"steps: {', '.join(names)}", f"steps.{name}.needs")
            if need == name:
                raise ValidationError(f"step {name} needs itself", f"steps.{name}.needs")
    done: list[str] = []
    placed: set[str] = set()
    while len(done) < len(names):
        ready = [n for n in names if n not in placed and all(d in placed for d in needs[n])]
        if not ready:
            cycle = _find_cycle(needs, [n for n in names if n not in placed])
            raise ValidationError(f"the steps form a cycle: {' -> '.join(cycle)}; remove one of these needs",
                                  f"steps.{cycle[0]}.needs")
        done.extend(ready)
        placed.update(ready)
    return done


def _find_cycle(needs: Mapping[str, tuple[str, ...]], left: list[str]) -> list[str]:
    """A cycle among `left` (every one of them is on or leads to a cycle), as names ending where it starts."""
    path = [left[0]]
    while True:
        nxt = next(d for d in needs[path[-1]] if d in left)
        if nxt in path:
            cycle = [*path[path.index(nxt):], nxt]
            return list(reversed(cycle))  # written in the order the steps run: a -> b means b needs a
        path.append(nxt)


def ancestors(needs: Mapping[str, tuple[str, ...]], name: str) -> set[str]:
    """Every step `name` waits for, directly or through others."""
    seen: set[str] = set()
    todo = list(needs[name])
    while todo:
        step = todo.pop()
        if step not in seen:
            seen.add(step)
            todo.extend(needs[step])
    return seen


def template_refs(text: str) -> list[str]:
    """The references inside `{{ }}` in `text`, in order."""
    return [m.group(1) for m in TEMPLATE_RE.finditer(text)]


def _check_templates(steps: Mapping[str, StepSpec], params: Mapping[str, Scalar]) -> None:
    needs = {n: s.needs for n, s in steps.items()}
    for name, step in steps.items():
        before = ancestors(needs, name)
        texts = [(f"steps.{name}.{k}", v) for k, v in _template_fields(step.job)]
        if step.when is not None:
            texts += [(f"steps.{name}.when", f"{{{{{ref}}}}}") for ref in step.when.refs()]
        for where, text in texts:
            for ref in template_refs(text):
                check_ref(ref, where, params, before)


def check_ref(ref: str, where: str, params: Mapping[str, Scalar], before: set[str]) -> None:
    """ValidationError (at `where`) unless `ref` names a param or an output of a step in `before`."""
    param = PARAM_REF_RE.match(ref)
    if param is not None:
        if param.group(1) not in params:
            known = ", ".join(sorted(params)) or "none"
            raise ValidationError(f"{{{{{ref}}}}} names a param that is not declared; declare it under params: "
                                  f"(declared: {known})", where)
        return
    output = OUTPUT_REF_RE.match(ref)
    if output is None:
        raise ValidationError(f"{{{{{ref}}}}} is not a template this version knows; use {{{{params.NAME}}}} or "
                              "{{steps.STEP.outputs.NAME}}", where)
    if output.group(1) not in before:
        raise ValidationError(f"{{{{{ref}}}}} names step {output.group(1)!r}, which is not a step this one needs "
                              f"(directly or through others); steps it needs: {', '.join(sorted(before)) or 'none'}",
                              where)


def _template_fields(job: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, text) of every job field that may hold templates: command, env values, roles' commands/env."""
    out: list[tuple[str, str]] = []
    if isinstance(job.get("command"), str):
        out.append(("command", job["command"]))
    out += [(f"env.{k}", v) for k, v in (job.get("env") or {}).items() if isinstance(v, str)]
    for role, spec in (job.get("roles") or {}).items():
        if isinstance(spec.get("command"), str):
            out.append((f"roles.{role}.command", spec["command"]))
        out += [(f"roles.{role}.env.{k}", v) for k, v in (spec.get("env") or {}).items() if isinstance(v, str)]
    return out


def parse_schedule(value: Any) -> ScheduleSpec:
    """`schedule: {cron, timezone, catch_up, max_catch_up, concurrency}` (see ScheduleSpec)."""
    if isinstance(value, str):
        value = {"cron": value}
    if not isinstance(value, Mapping):
        raise ValidationError("expected a mapping such as {cron: \"0 2 * * *\", timezone: UTC}", "schedule")
    value = dict(value)
    reject_unknown_keys(value, _SCHEDULE_KEYS, "schedule")
    cron = value.get("cron")
    if not isinstance(cron, str) or len(cron.split()) != 5 or not croniter.is_valid(cron):
        raise ValidationError(f"{cron!r} is not a valid cron line: five fields (minute 0-59, hour 0-23, day 1-31, "
                              "month 1-12, weekday 0-6), e.g. \"0 2 * * *\"", "schedule.cron")
    timezone = value.get("timezone", "UTC")
    _check_timezone(timezone)
    catch_up = _choice(value.get("catch_up", "latest"), CATCH_UP, "schedule.catch_up")
    max_catch_up = value.get("max_catch_up", DEFAULT_MAX_CATCH_UP)
    if isinstance(max_catch_up, bool) or not isinstance(max_catch_up, int) or \
            not 1 <= max_catch_up <= MAX_CATCH_UP_LIMIT:
        raise ValidationError(f"expected a whole number 1..{MAX_CATCH_UP_LIMIT}", "schedule.max_catch_up")
    concurrency = _choice(value.get("concurrency", "forbid"), CONCURRENCY, "schedule.concurrency")
    return ScheduleSpec(cron=" ".join(cron.split()), timezone=timezone, catch_up=catch_up,
                        max_catch_up=max_catch_up, concurrency=concurrency)


def _check_timezone(value: Any) -> None:
    if not isinstance(value, str) or not value or ".." in value or value.startswith("/"):
        raise ValidationError(f"{value!r} is not a timezone; use an IANA name such as UTC or Asia/Shanghai",
                              "schedule.timezone")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"unknown timezone {value!r}; use an IANA name such as UTC, Europe/Berlin or "
                              "Asia/Shanghai", "schedule.timezone") from None


def _choice(value: Any, choices: tuple[str, ...], where: str) -> str:
    if not isinstance(value, str) or value not in choices:
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        raise ValidationError(f"unknown value {value!r}{hint}; use one of {', '.join(choices)}", where)
    return value
