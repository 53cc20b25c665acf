"""A run's next moves (plan_run), `when:` conditions, templates, params and outputs."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpupool.domain.conditions import ConditionError, compare, parse_condition
from gpupool.domain.errors import ValidationError
from gpupool.domain.pipeline_runs import (
    StepRecord,
    StepState,
    parse_outputs,
    plan_run,
    retry_states,
    run_params,
)
from gpupool.domain.pipelines import PipelineSpec
from gpupool.domain.specs import parse_spec

W, SUB, OK, BAD, SKIP, UP = (StepState.WAITING, StepState.SUBMITTED, StepState.SUCCEEDED, StepState.FAILED,
                             StepState.SKIPPED, StepState.UPSTREAM_FAILED)


def spec_of(**steps: Any) -> PipelineSpec:
    spec = parse_spec({"kind": "pipeline", "name": "p", "params": {"epochs": 3, "tag": "v1"}, "steps": steps})
    assert isinstance(spec, PipelineSpec)
    return spec


# prepare -> {train, stats} -> evaluate -> publish (when accuracy > 0.9)
DIAMOND = spec_of(
    prepare={"command": "prep"},
    train={"needs": ["prepare"], "command": "train --epochs {{params.epochs}}"},
    stats={"needs": ["prepare"], "command": "stats"},
    evaluate={"needs": ["train", "stats"], "command": "eval", "env": {"MODEL": "{{steps.train.outputs.path}}"}},
    publish={"needs": ["evaluate"], "when": "{{steps.evaluate.outputs.accuracy}} > 0.9", "command": "pub"},
)
PARAMS = {"epochs": 3, "tag": "v1"}


def states(**given_states: StepState | StepRecord) -> dict[str, StepRecord]:
    return {k: v if isinstance(v, StepRecord) else StepRecord(v) for k, v in given_states.items()}


def test_first_the_steps_without_needs_are_submitted() -> None:
    plan = plan_run(DIAMOND, PARAMS, {})
    assert [s.step for s in plan.submit] == ["prepare"]
    assert plan.outcome is None


def test_independent_steps_are_submitted_together_with_params_filled_in() -> None:
    plan = plan_run(DIAMOND, {"epochs": 1, "tag": "v1"}, states(prepare=OK))
    assert [s.step for s in plan.submit] == ["stats", "train"]  # the spec's order: by name among equals
    assert plan.submit[1].job["command"] == "train --epochs 1"


def test_a_step_waits_for_all_its_needs() -> None:
    assert plan_run(DIAMOND, PARAMS, states(prepare=OK, train=OK, stats=SUB)).submit == ()


def test_outputs_flow_into_env_and_when() -> None:
    done = states(prepare=OK, train=StepRecord(OK, outputs={"path": "/runs/1/model.pt"}), stats=OK)
    plan = plan_run(DIAMOND, PARAMS, done)
    assert plan.submit[0].job["env"] == {"MODEL": "/runs/1/model.pt"}
    good = done | states(evaluate=StepRecord(OK, outputs={"accuracy": 0.93}))
    assert [s.step for s in plan_run(DIAMOND, PARAMS, good).submit] == ["publish"]
    poor = done | states(evaluate=StepRecord(OK, outputs={"accuracy": 0.85}))
    plan = plan_run(DIAMOND, PARAMS, poor)
    assert plan.submit == ()
    assert plan.updates["publish"].state == SKIP
    assert "0.85 > 0.9" in plan.updates["publish"].reason
    assert plan.outcome == "succeeded" and "1 skipped" in plan.reason


def test_a_missing_output_fails_the_step_with_the_names_it_has() -> None:
    done = states(prepare=OK, train=StepRecord(OK, outputs={"path": "x"}), stats=OK,
                  evaluate=StepRecord(OK, outputs={"loss": 0.1}))
    plan = plan_run(DIAMOND, PARAMS, done)
    assert plan.updates["publish"].state == BAD
    assert "no output 'accuracy'" in plan.updates["publish"].reason and "loss" in plan.updates["publish"].reason
    assert plan.outcome == "failed"


def test_a_failed_step_stops_what_has_not_started_and_fails_the_run_once_nothing_runs() -> None:
    plan = plan_run(DIAMOND, PARAMS, states(prepare=OK, train=BAD, stats=SUB))
    assert plan.submit == ()
    assert {n: r.state for n, r in plan.updates.items()} == {"evaluate": UP, "publish": UP}
    assert plan.outcome is None  # stats still runs
    plan = plan_run(DIAMOND, PARAMS, states(prepare=OK, train=BAD, stats=OK, evaluate=UP, publish=UP))
    assert plan.outcome == "failed" and plan.reason.startswith("step train failed")


def test_what_only_a_skipped_step_feeds_is_skipped() -> None:
    spec = spec_of(a={"command": "x"}, b={"needs": ["a"], "when": "false", "command": "x"},
                   c={"needs": ["b"], "command": "x"}, d={"needs": ["a", "b"], "command": "x"})
    plan = plan_run(spec, PARAMS, states(a=OK))
    assert {n: r.state for n, r in plan.updates.items()} == {"b": SKIP, "c": SKIP}
    assert [s.step for s in plan.submit] == ["d"]  # d also needs a, which ran


def test_retry_resets_only_what_failed() -> None:
    before = states(prepare=OK, train=BAD, stats=OK, evaluate=UP, publish=UP)
    reset = retry_states(before)
    assert sorted(reset) == ["evaluate", "publish", "train"]
    after = before | reset
    assert [s.step for s in plan_run(DIAMOND, PARAMS, after).submit] == ["train"]
    with pytest.raises(ValidationError):
        retry_states(states(prepare=OK, train=SKIP))


def test_params_overrides_keep_the_default_type_and_refuse_unknown_names() -> None:
    assert run_params(DIAMOND, {"epochs": "1"}) == {"epochs": 1, "tag": "v1"}
    with pytest.raises(ValidationError) as info:
        run_params(DIAMOND, {"epoch": "1"})
    assert info.value.field == "params.epoch"
    with pytest.raises(ValidationError):
        run_params(DIAMOND, {"epochs": "many"})


def test_outputs_must_be_a_small_json_object() -> None:
    assert parse_outputs('{"accuracy": 0.93, "ok": true}') == {"accuracy": 0.93, "ok": True}
    for bad in ("[1]", "{", '{"a": {"b": 1}}', '{"bad name": 1}'):
        with pytest.raises(ValidationError):
            parse_outputs(bad)


@pytest.mark.parametrize(("text", "expected"), [
    ("1 < 2", True), ("2 <= 1", False), ("'a' == 'a'", True), ("'a' != \"a\"", False),
    ("true and not false", True), ("1 > 2 or 3 > 2", True), ("(1 > 2 or 3 > 2) and 0", False),
    ("{{params.epochs}} >= 3 and {{params.tag}} == 'v1'", True), ("{{params.tag}}", True),
])
def test_conditions(text: str, expected: bool) -> None:
    condition = parse_condition(text, "when")
    assert condition.evaluate(lambda ref: PARAMS[ref.split(".")[1]]) is expected


def test_values_of_different_types_do_not_compare() -> None:
    with pytest.raises(ConditionError, match="cannot compare"):
        parse_condition("'0.95' > 0.9", "when").evaluate(lambda ref: 0)
    with pytest.raises(ConditionError):
        compare(True, ">", False)


@settings(deadline=None)  # a shared machine can be slow; no timing is tested
@given(st.floats(allow_nan=False, allow_infinity=False, width=32), st.floats(allow_nan=False, allow_infinity=False,
                                                                             width=32))
def test_numeric_comparisons_agree_with_python(a: float, b: float) -> None:
    values = {"a": a, "b": b}
    for op, expected in (("<", a < b), ("<=", a <= b), (">", a > b), (">=", a >= b), ("==", a == b)):
        cond = parse_condition(f"{{{{params.a}}}} {op} {{{{params.b}}}}", "when")
        assert cond.evaluate(lambda ref: values[ref.split(".")[1]]) is expected
