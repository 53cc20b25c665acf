"""A pipeline run's next moves, as a pure function of its state.

`plan_run(spec, params, steps)` looks at every step's state and says what the controller does now:
submit the steps whose needs are done (their job spec with the templates filled in), skip the steps whose
`when:` is false or whose needs were all skipped, mark the steps that cannot start because the run failed
(`upstream_failed`), fail the steps whose templates or condition cannot be resolved, and, once nothing runs
any more, end the run (succeeded, or failed naming the failed steps). `retry_states` turns a failed run's
steps back to waiting, keeping what succeeded or was skipped by its condition.

Semantics (also in docs/pipelines.md): a failed step (after its own retries) fails the run; steps not yet
started are then not started (`upstream_failed`), steps already running finish. A step is skipped when its
condition is false, or when every step it needs was skipped ("what only it feeds").
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from gpupool.domain.conditions import ConditionError, Value
from gpupool.domain.errors import ValidationError
from gpupool.domain.pipelines import (
    OUTPUT_REF_RE,
    PARAM_REF_RE,
    TEMPLATE_RE,
    PipelineSpec,
    Scalar,
    StepSpec,
    parse_params,
)
from gpupool.domain.specs import parse_spec

MAX_OUTPUTS = 64  # outputs are small facts (a metric, a path, a flag), not data: pass data through the run dir
MAX_OUTPUT_CHARS = 4096


class StepState(StrEnum):
    """Where one step of a run is."""

    WAITING = "waiting"  # its needs are not done yet
    SUBMITTED = "submitted"  # its job is in the queue or running
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # its job failed (after its retries), or it could not be submitted
    SKIPPED = "skipped"  # its condition was false, or everything it needs was skipped
    UPSTREAM_FAILED = "upstream_failed"  # not started because the run failed
    CANCELLED = "cancelled"

    @property
    def is_done(self) -> bool:
        """True once the step will not change any more (until a retry)."""
        return self not in (StepState.WAITING, StepState.SUBMITTED)


RETRIED_STATES = frozenset({StepState.FAILED, StepState.UPSTREAM_FAILED, StepState.CANCELLED})


@dataclass(frozen=True, slots=True)
class StepRecord:
    """What the controller knows of one step: its state, why, and the outputs it wrote (once succeeded)."""

    state: StepState = StepState.WAITING
    reason: str = ""
    outputs: Mapping[str, Value] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Submit:
    """Submit step `step` as this job spec (templates filled in)."""

    step: str
    job: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RunPlan:
    """What to do now: submit these steps, set those steps' states (with reasons), and end the run when
    `outcome` is set ("succeeded" | "failed", with `reason`)."""

    submit: tuple[Submit, ...] = ()
    updates: Mapping[str, StepRecord] = field(default_factory=dict)
    outcome: str | None = None
    reason: str = ""


def plan_run(spec: PipelineSpec, params: Mapping[str, Scalar], steps: Mapping[str, StepRecord]) -> RunPlan:
    """See the module docstring. Deterministic: steps are visited in the spec's topological order."""
    state = {s.name: steps.get(s.name, StepRecord()) for s in spec.steps}
    updates: dict[str, StepRecord] = {}
    submits: list[Submit] = []

    def put(name: str, record: StepRecord) -> None:
        state[name] = updates[name] = record

    failed = [n for n, r in state.items() if r.state in (StepState.FAILED, StepState.CANCELLED)]
    for step in spec.steps:
        if state[step.name].state != StepState.WAITING:
            continue
        if failed:
            put(step.name, StepRecord(StepState.UPSTREAM_FAILED, f"not started: step {failed[0]} failed"))
            continue
        needs = [state[n] for n in step.needs]
        if any(not r.state.is_done for r in needs):
            continue
        if needs and all(r.state == StepState.SKIPPED for r in needs):
            put(step.name, StepRecord(StepState.SKIPPED, f"skipped: every step it needs was skipped "
                                                         f"({', '.join(step.needs)})"))
            continue
        decided = _start(step, params, state)
        if isinstance(decided, Submit):
            submits.append(decided)
        else:
            put(step.name, decided)
            if decided.state == StepState.FAILED:
                failed.append(step.name)
    return RunPlan(tuple(submits), updates, *_outcome(spec, state, bool(submits)))


def _start(step: StepSpec, params: Mapping[str, Scalar], state: Mapping[str, StepRecord]) -> Submit | StepRecord:
    resolve = _resolver(params, state)
    if step.when is not None:
        try:
            go = step.when.evaluate(resolve)
        except ConditionError as exc:
            return StepRecord(StepState.FAILED, f"when: {step.when.text}: {exc.detail}")
        if not go:
            return StepRecord(StepState.SKIPPED, f"skipped: when: {step.when.text} is false "
                                                 f"({render(step.when.text, resolve)})")
    try:
        job = render_job(step.job, resolve)
        parse_spec(job)  # the filled-in values must still make a valid job (e.g. a number where one goes)
    except ValidationError as exc:
        return StepRecord(StepState.FAILED, f"cannot start: {exc}")
    return Submit(step.name, job)


def _outcome(spec: PipelineSpec, state: Mapping[str, StepRecord], submitting: bool) -> tuple[str | None, str]:
    if submitting or any(not r.state.is_done for r in state.values()):
        return None, ""
    failed = [s.name for s in spec.steps if state[s.name].state in (StepState.FAILED, StepState.CANCELLED)]
    if failed:
        first = state[failed[0]]
        return "failed", f"step {failed[0]} {first.state}: {first.reason}" + \
            (f" (and {len(failed) - 1} more)" if len(failed) > 1 else "")
    done = sum(1 for r in state.values() if r.state == StepState.SUCCEEDED)
    skipped = len(state) - done
    return "succeeded", f"{done} step(s) succeeded" + (f", {skipped} skipped" if skipped else "")


def retry_states(steps: Mapping[str, StepRecord]) -> dict[str, StepRecord]:
    """The steps a retry resets to waiting (failed, upstream_failed, cancelled); ValidationError when none."""
    reset = {n: StepRecord(StepState.WAITING, "waiting (retry)") for n, r in sorted(steps.items())
             if r.state in RETRIED_STATES}
    if not reset:
        raise ValidationError("no step failed or was cancelled; there is nothing to retry", "run")
    return reset


# ------------------------------------------------------------------------------------- templates
def _resolver(params: Mapping[str, Scalar], state: Mapping[str, StepRecord]) -> Any:
    def resolve(ref: str) -> Value:
        param = PARAM_REF_RE.match(ref)
        if param is not None:
            if param.group(1) not in params:
                raise ConditionError(f"param {param.group(1)} has no value")
            return params[param.group(1)]
        output = OUTPUT_REF_RE.match(ref)
        if output is None:
            raise ConditionError(f"unknown template {{{{{ref}}}}}")
        step, name = output.groups()
        record = state.get(step)
        if record is None or record.state != StepState.SUCCEEDED:
            raise ConditionError(f"step {step} did not succeed ({record.state if record else 'unknown'}), so it "
                                 "has no outputs")
        if name not in record.outputs:
            known = ", ".join(sorted(record.outputs)) or "none"
            raise ConditionError(f"step {step} wrote no output {name!r} (its outputs: {known})")
        return record.outputs[name]
    return resolve


def _text(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render(text: str, resolve: Any) -> str:
    """`text` with every `{{ref}}` replaced by its value; ConditionError when one has none."""
    return TEMPLATE_RE.sub(lambda m: _text(resolve(m.group(1))), text)


def render_job(job: Mapping[str, Any], resolve: Any) -> dict[str, Any]:
    """A copy of the step's job spec with the templates of its commands and env values filled in."""
    out: dict[str, Any] = json.loads(json.dumps(dict(job)))  # a deep copy of plain data
    try:
        if isinstance(out.get("command"), str):
            out["command"] = render(out["command"], resolve)
        out["env"] = {k: render(v, resolve) if isinstance(v, str) else v for k, v in (out.get("env") or {}).items()}
        for role in (out.get("roles") or {}).values():
            if isinstance(role.get("command"), str):
                role["command"] = render(role["command"], resolve)
            if role.get("env"):
                role["env"] = {k: render(v, resolve) if isinstance(v, str) else v for k, v in role["env"].items()}
    except ConditionError as exc:
        raise ValidationError(exc.detail, "command") from None
    if not out["env"]:
        del out["env"]
    return out


# ------------------------------------------------------------------------------------- params, outputs
def run_params(spec: PipelineSpec, overrides: Mapping[str, Any]) -> dict[str, Scalar]:
    """The params of one run: the spec's, with `overrides` (from `-p k=v`) for declared params only. A text
    override of a number param is read as a number."""
    given = parse_params(dict(overrides), "params")
    out = dict(spec.params)
    for key, value in given.items():
        if key not in spec.params:
            raise ValidationError(f"{key!r} is not a param of pipeline {spec.name}; its params: "
                                  f"{', '.join(sorted(spec.params)) or 'none'}", f"params.{key}")
        out[key] = _like(spec.params[key], value, key)
    return out


def _like(default: Scalar, value: Scalar, key: str) -> Scalar:
    if not isinstance(value, str) or isinstance(default, str):
        return value
    try:
        if isinstance(default, bool):
            return {"true": True, "false": False}[value.lower()]
        return int(value) if isinstance(default, int) and re.fullmatch(r"-?\d+", value) else float(value)
    except (KeyError, ValueError):
        raise ValidationError(f"expected a {type(default).__name__} like the default {default!r}, got {value!r}",
                              f"params.{key}") from None


def parse_outputs(text: str) -> dict[str, Value]:
    """The outputs a step wrote (outputs.json: a JSON object of names to strings, numbers or booleans);
    ValidationError saying what is wrong otherwise."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValidationError(f"outputs.json is not JSON: {exc}", "outputs") from None
    if not isinstance(data, dict) or len(data) > MAX_OUTPUTS:
        raise ValidationError(f"outputs.json must be a JSON object of at most {MAX_OUTPUTS} entries", "outputs")
    out: dict[str, Value] = {}
    for key, value in data.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValidationError(f"{key!r} is not a valid output name (letters, digits, _)", "outputs")
        if not isinstance(value, str | int | float | bool) or len(str(value)) > MAX_OUTPUT_CHARS:
            raise ValidationError(f"output {key} must be a string, number or boolean of at most "
                                  f"{MAX_OUTPUT_CHARS} characters", "outputs")
        out[key] = value
    return out


def with_state(record: StepRecord, state: StepState, reason: str) -> StepRecord:
    """`record` with a new state and reason (outputs kept)."""
    return replace(record, state=state, reason=reason)


class PipelineRunLifecycle:
    """`kind: pipeline`: a run has no replicas; the pipeline worker moves it along from its steps (see
    `gpupool.server.workers.pipelines`), so the reconciler has nothing to do for it."""

    def advance(self, view: object, now: float) -> None:
        """Nothing: a run's status follows its steps, not replicas."""
        return None
