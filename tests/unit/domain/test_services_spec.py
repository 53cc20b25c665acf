"""`kind: service` specs and the autoscaling arithmetic (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from gpupool.domain.errors import ValidationError
from gpupool.domain.services import ScaleInput, ServiceSpec, child_spec, desired_replicas, wanted
from gpupool.domain.specs import parse_spec

ISSUE_EXAMPLE: dict[str, Any] = {
    "kind": "service", "name": "qwen-chat", "project": "nlp",
    "command": "vllm serve Qwen/Qwen2.5-0.5B-Instruct --served-model-name qwen2.5-0.5b --port $PORT",
    "resources": {"gpu": {"share": 0.5, "memory": "40GiB"}, "cpu": 4, "memory": "32GiB"}, "port": 8000,
    "readiness": {"path": "/health", "timeout": "10m"}, "models": ["qwen2.5-0.5b"], "replicas": {"min": 0, "max": 4},
    "scaling": {"target_inflight": 8, "scale_down_delay": "5m", "cold_start_timeout": "10m"}, "priority": "high"}


def spec(**changes: Any) -> ServiceSpec:
    parsed = parse_spec(ISSUE_EXAMPLE | changes)
    assert isinstance(parsed, ServiceSpec)
    return parsed


def test_the_example_parses_and_round_trips() -> None:
    s = spec()
    assert (s.models, s.min_replicas, s.max_replicas, s.port, s.readiness_path) == (("qwen2.5-0.5b",), 0, 4, 8000,
                                                                                  "/health")
    assert (s.scaling.scale_down_delay_s, s.scaling.cold_start_timeout_s, s.priority) == (300, 600, 900)
    assert s.readiness_timeout_s == 600
    assert s.roles[0].resources.gpu is not None and s.roles[0].resources.gpu.share_milli == 500
    assert parse_spec(s.to_dict()) == s


@pytest.mark.parametrize(("changes", "field"), [
    ({"models": []}, "models"), ({"models": ["a b"]}, "models[0]"),
    ({"replicas": {"min": 3, "max": 2}}, "replicas.min"),
    ({"scaling": {"target_inflight": 0}}, "scaling.target_inflight"), ({"scaling": {"burst": 1}}, "scaling.burst"),
    ({"readiness": {"path": "health"}}, "readiness.path"), ({"port": 0}, "port"), ({"command": None}, "command"),
    ({"max_runtime": "1h"}, "max_runtime"), ({"environment": "no spaces"}, "environment"),
    ({"environment": 3}, "environment"),
    ({"readiness": {"timeout": "soon"}}, "readiness.timeout")])
def test_bad_fields_are_named(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as error:
        spec(**changes)
    assert error.value.field == field


def test_a_replica_is_a_job_serving_on_the_chosen_port() -> None:
    child = parse_spec(child_spec(spec(), 2))
    assert child.kind.value == "job" and child.name == "qwen-chat-r2" and child.ports == (8000,)
    assert child.command is not None and child.command.startswith('export PORT="$GPUPOOL_PORT"; vllm serve')
    assert child.roles[0].resources == spec().roles[0].resources and child.priority == 900


def test_an_environment_is_accepted_and_kept_in_the_canonical_form() -> None:
    s = spec(environment="vllm")
    assert s.environment == "vllm"
    assert s.to_dict()["environment"] == "vllm" and parse_spec(s.to_dict()) == s
    assert "environment" not in spec().to_dict()  # none named: the canonical form has no key


def test_every_replica_runs_in_the_service_environment() -> None:
    child = parse_spec(child_spec(spec(environment="vllm"), 1))
    assert child.kind.value == "job" and child.environment == "vllm"
    assert parse_spec(child_spec(spec(), 1)).environment is None


def test_a_changed_environment_changes_the_spec_and_the_new_revision_replicas() -> None:
    before, after = spec(environment="vllm"), spec(environment="vllm-next")
    assert before != after and before.to_dict() != after.to_dict()
    old_child, new_child = child_spec(before, 1), child_spec(after, 2)
    assert (old_child["name"], old_child["environment"]) == ("qwen-chat-r1", "vllm")
    assert (new_child["name"], new_child["environment"]) == ("qwen-chat-r2", "vllm-next")
    assert "environment" not in child_spec(spec(), 3)  # an update that drops it: replicas run without one


@pytest.mark.parametrize(("inflight", "held", "expected"), [
    (0, 0, 0),  # min 0, no load
    (0, 1, 1),  # a held request wakes a replica
    (8, 0, 1),  # ceil(8 / 8)
    (9, 0, 2),  # ceil(9 / 8)
    (20, 5, 4),  # ceil(25 / 8) = 4, = max
    (100, 0, 4),  # capped at max
])
def test_wanted_is_ceil_of_load_over_target_within_bounds(inflight: int, held: int, expected: int) -> None:
    assert wanted(spec(), inflight, held) == expected


def test_scale_up_at_once_and_down_only_after_the_delay() -> None:
    s = spec()  # target 8, delay 300 s
    assert desired_replicas(s, ScaleInput(inflight=17, held=0, current=1, busy_at=0, now=10))[0] == 3  # ceil(17/8)
    # load wants 1 of 3 replicas, but has only for 299 s: keep 3
    assert desired_replicas(s, ScaleInput(inflight=3, held=0, current=3, busy_at=1, now=300)) == (3, "")
    count, reason = desired_replicas(s, ScaleInput(inflight=3, held=0, current=3, busy_at=0, now=300))
    assert count == 1 and reason.startswith("scale down 3 -> 1")
    count, reason = desired_replicas(s, ScaleInput(inflight=0, held=0, current=1, busy_at=0, now=301))
    assert count == 0 and reason.startswith("scale to zero")
