"""Pipeline specs: parsing, DAG validation (unknown steps, cycles), templates, schedules; errors name the field."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpupool.domain.errors import ValidationError
from gpupool.domain.pipelines import PipelineSpec, topological_order
from gpupool.domain.specs import parse_spec


def pipeline(**steps: Any) -> dict[str, Any]:
    return {"kind": "pipeline", "name": "nightly", "params": {"epochs": 3}, "steps": steps}


NIGHTLY = pipeline(
    prepare={"command": "python prep.py", "resources": {"cpu": 2}},
    train={"needs": ["prepare"], "replicas": 2, "distributed": "torch", "retries": 2,
           "command": "python train.py --epochs {{params.epochs}}"},
    evaluate={"needs": ["train"], "command": "python eval.py"},
    publish={"needs": ["evaluate"], "when": "{{steps.evaluate.outputs.accuracy}} > 0.9", "command": "./publish.sh"},
)


def field_of(data: dict[str, Any]) -> str | None:
    with pytest.raises(ValidationError) as info:
        parse_spec(data)
    return info.value.field


def test_a_pipeline_parses_in_topological_order_and_round_trips() -> None:
    spec = parse_spec(NIGHTLY)
    assert isinstance(spec, PipelineSpec)
    assert [s.name for s in spec.steps] == ["prepare", "train", "evaluate", "publish"]
    assert spec.step("train").job["distributed"] == "torch"
    assert spec.step("train").job["replicas"] == 2
    assert spec.step("publish").when is not None
    assert spec.replica_count == 0  # a controller: no replicas of its own
    assert parse_spec(spec.to_dict()) == spec


def test_a_step_takes_every_job_field_and_its_errors_name_the_step() -> None:
    assert field_of(pipeline(a={"command": "x", "replicas": 0})) == "steps.a.replicas"
    assert field_of(pipeline(a={"command": "x", "resources": {"gpu": "lots"}})).startswith("steps.a.resources")
    assert field_of(pipeline(a={"command": "x", "project": "p"})) == "steps.a.project"
    assert field_of(pipeline(a={"replicas": 1})) == "steps.a.command"


def test_an_unknown_need_is_named_with_a_suggestion() -> None:
    with pytest.raises(ValidationError) as info:
        parse_spec(pipeline(prepare={"command": "x"}, train={"needs": ["prepar"], "command": "y"}))
    assert info.value.field == "steps.train.needs"
    assert "'prepar'" in str(info.value) and 'did you mean "prepare"' in str(info.value)


def test_a_cycle_names_the_steps_on_it() -> None:
    with pytest.raises(ValidationError) as info:
        parse_spec(pipeline(a={"command": "x", "needs": ["c"]}, b={"command": "x", "needs": ["a"]},
                            c={"command": "x", "needs": ["b"]}, d={"command": "x"}))
    message = str(info.value)
    assert "cycle" in message and all(s in message for s in ("a", "b", "c")) and " d " not in message
    assert info.value.field is not None and info.value.field.endswith(".needs")
    assert field_of(pipeline(a={"command": "x", "needs": ["a"]})) == "steps.a.needs"


def test_templates_must_name_declared_params_and_needed_steps() -> None:
    assert field_of(pipeline(a={"command": "run {{params.nope}}"})) == "steps.a.command"
    # b does not need a, so a's outputs may not be there when b starts
    bad = pipeline(a={"command": "x"}, b={"command": "y {{steps.a.outputs.path}}"})
    assert field_of(bad) == "steps.b.command"
    assert field_of(pipeline(a={"command": "x", "when": "{{steps.ghost.outputs.x}} > 1"})) == "steps.a.when"
    assert field_of(pipeline(a={"command": "x", "env": {"X": "{{weird}}"}})) == "steps.a.env.X"
    # through another step is fine: c needs b needs a
    parse_spec(pipeline(a={"command": "x"}, b={"command": "y", "needs": ["a"]},
                        c={"command": "{{steps.a.outputs.path}}", "needs": ["b"]}))


@pytest.mark.parametrize(("schedule", "where"), [
    ({"cron": "61 * * * *"}, "schedule.cron"),
    ({"cron": "* * *"}, "schedule.cron"),
    ({"cron": "0 2 * * *", "timezone": "Mars/Olympus"}, "schedule.timezone"),
    ({"cron": "0 2 * * *", "timezone": "../../etc/passwd"}, "schedule.timezone"),
    ({"cron": "0 2 * * *", "catch_up": "some"}, "schedule.catch_up"),
    ({"cron": "0 2 * * *", "concurrency": "maybe"}, "schedule.concurrency"),
    ({"cron": "0 2 * * *", "max_catch_up": 0}, "schedule.max_catch_up"),
    ({"cron": "0 2 * * *", "every": "day"}, "schedule.every"),
])
def test_bad_schedules_name_the_field(schedule: dict[str, Any], where: str) -> None:
    assert field_of(pipeline(a={"command": "x"}) | {"schedule": schedule}) == where


def test_a_good_schedule_is_kept_with_defaults() -> None:
    spec = parse_spec(pipeline(a={"command": "x"}) | {"schedule": {"cron": "0  2 * * *", "timezone": "Asia/Shanghai"}})
    assert isinstance(spec, PipelineSpec) and spec.schedule is not None
    assert spec.schedule.to_dict() == {"cron": "0 2 * * *", "timezone": "Asia/Shanghai", "catch_up": "latest",
                                       "max_catch_up": 10, "concurrency": "forbid"}


def test_bad_when_conditions_are_refused_at_submission() -> None:
    for when in ("{{params.epochs}} >", "__import__('os')", "1 > > 2", "(1 > 2", "1 + 2"):
        assert field_of(pipeline(a={"command": "x", "when": when})) == "steps.a.when", when


@st.composite
def dags(draw: st.DrawFn) -> dict[str, tuple[str, ...]]:
    n = draw(st.integers(1, 8))
    names = [f"s{i}" for i in range(n)]
    # each step may need only earlier ones (in a shuffled naming), so the graph has no cycle
    order = draw(st.permutations(names))
    return {order[i]: tuple(sorted(draw(st.sets(st.sampled_from(order[:i]))) if i else ())) for i in range(n)}


@settings(deadline=None)  # a shared machine can be slow; no timing is tested
@given(dags())
def test_topological_order_puts_every_step_after_its_needs(needs: dict[str, tuple[str, ...]]) -> None:
    order = topological_order(needs)
    assert sorted(order) == sorted(needs)
    position = {name: i for i, name in enumerate(order)}
    assert all(position[d] < position[n] for n, ds in needs.items() for d in ds)
    assert topological_order(dict(reversed(list(needs.items())))) == order  # stable, whatever the dict order


@settings(deadline=None)  # a shared machine can be slow; no timing is tested
@given(dags(), st.data())
def test_adding_a_back_edge_is_always_reported_as_a_cycle(needs: dict[str, tuple[str, ...]],
                                                           data: st.DataObject) -> None:
    order = topological_order(needs)
    edges = [(n, d) for n, ds in needs.items() for d in ds]
    if not edges:
        return
    step, need = data.draw(st.sampled_from(edges))
    cyclic = dict(needs) | {need: (*needs[need], step)}  # need now needs step, which needs need
    with pytest.raises(ValidationError, match="cycle"):
        topological_order(cyclic)
    assert order  # the acyclic graph itself was fine
