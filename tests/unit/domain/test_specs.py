"""Parsing workload specs: defaults, units, roles, distributed checks, errors that say what to fix."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpupool.domain.errors import ValidationError
from gpupool.domain.specs import (
    Distributed,
    JobSpec,
    WorkloadKind,
    parse_priority,
    parse_spec,
    priority_name,
    validate_name,
)


def job(**fields: Any) -> dict[str, Any]:
    return {"kind": "job", "name": "train", "command": "python train.py", **fields}


def test_design_example_parses() -> None:
    spec = parse_spec(job(name="resnet-ddp", project="vision", replicas=4, distributed="torch",
                          resources={"cpu": 4, "memory": "16GiB", "gpu": 1}, env={"NCCL_DEBUG": "WARN"},
                          priority="high", max_runtime="6h", retries=1))
    assert isinstance(spec, JobSpec)
    assert spec.kind == WorkloadKind.JOB
    assert spec.replica_count == 4 and spec.gang_size == 4
    role = spec.roles[0]
    # 4 cores = 4000 milli; 16 GiB = 16 * 1024 MiB; one whole card
    assert (role.role, role.resources.cpu_milli, role.resources.memory_mib, role.resources.gpu.count) == \
        ("worker", 4000, 16384, 1)
    assert spec.distributed == Distributed.TORCH
    assert spec.priority == 900 and spec.max_runtime_s == 6 * 3600 and spec.retries == 1
    assert dict(spec.env) == {"NCCL_DEBUG": "WARN"}


def test_defaults() -> None:
    spec = parse_spec({"command": "echo hi"})
    assert spec.kind == WorkloadKind.JOB and spec.name == "job"
    assert spec.replica_count == 1 and spec.priority == 500 and spec.preemptible
    assert spec.roles[0].resources.cpu_milli == 1000 and spec.roles[0].resources.memory_mib == 1024
    assert spec.project is None and spec.queue is None and spec.max_runtime_s is None


def test_partial_resources_keep_the_other_defaults() -> None:
    spec = parse_spec(job(resources={"gpu": 0.5}))
    r = spec.roles[0].resources
    assert (r.cpu_milli, r.memory_mib, r.gpu.share_milli) == (1000, 1024, 500)


def test_tensorflow_roles_are_numbered_chief_worker_ps() -> None:
    spec = parse_spec(job(distributed="tensorflow", roles={
        "ps": {"replicas": 2, "resources": {"cpu": 1}},
        "worker": {"replicas": 2, "command": "python worker.py"},
        "chief": {}}))
    numbering = [(n, role.role, k) for n, role, k in spec.replica_roles()]
    assert numbering == [(0, "chief", 0), (1, "worker", 0), (2, "worker", 1), (3, "ps", 0), (4, "ps", 1)]
    assert spec.command_for(spec.roles[1]) == "python worker.py"
    assert spec.command_for(spec.roles[0]) == "python train.py"


def test_command_as_a_list_is_quoted() -> None:
    assert parse_spec(job(command=["echo", "a b"])).command == "echo 'a b'"


@pytest.mark.parametrize(("fields", "message"), [
    ({"comand": "x"}, 'comand: unknown field (did you mean "command"?)'),
    ({"kind": "jbo"}, 'unknown kind \'jbo\' (did you mean "job"?)'),
    ({"kind": "sweep"}, "command: unknown field; allowed: algorithm"),
    ({"kind": "notebook", "command": "x"}, "command: a notebook is one JupyterLab replica"),
    ({"resources": {"memory": "16GB!"}}, "resources.memory: cannot read"),
    ({"resources": {"memory": 16}}, "needs a unit"),
    ({"resources": {"cpu": 10**9}}, "more than any machine has"),
    ({"resources": {"gpu": 1.5}}, "a fraction must be below 1"),
    ({"replicas": 0}, "replicas: 0 is out of range"),
    ({"replicas": 10**6}, "out of range"),
    ({"replicas": True}, "expected a whole number"),
    ({"priority": "urgent"}, "unknown priority"),
    ({"priority": 5000}, "out of range"),
    ({"max_runtime": "6 hours"}, "cannot read"),
    ({"max_runtime": "900d"}, "longer than a year"),
    ({"retries": -1}, "out of range"),
    ({"preemptible": "yes"}, "expected true or false"),
    ({"name": "../etc"}, "not a valid name"),
    ({"project": "a/b"}, "project: "),
    ({"name": "x" * 64}, "not a valid name"),
    ({"env": {"GPUPOOL_REPLICA": "3"}}, "gpupool sets this variable"),
    ({"env": {"1BAD": "x"}}, "not a valid variable name"),
    ({"env": {"A": {"nested": 1}}}, "expected a string"),
    ({"env": ["A=1"]}, "expected a mapping"),
    ({"command": ""}, "expected a command line"),
    ({"command": "x" * 70_000}, "put it in a script"),
    ({"replicas": 2, "roles": {"worker": {}}}, "either replicas"),
    ({"roles": {"wroker": {}}}, 'did you mean "worker"'),
    ({"roles": {"chief": {"replicas": 2}}}, "at most one chief"),
    ({"distributed": "pytorch"}, 'did you mean "torch"'),
    ({"distributed": "torch", "roles": {"worker": {"replicas": 2}}}, "torch jobs use replicas"),
    ({"distributed": "torch", "replicas": 2, "env": {"RANK": "0"}}, "RANK is set by gpupool"),
    ({"distributed": "torch", "replicas": 2, "min_available": 1}, "needs all its replicas"),
    ({"replicas": 2, "min_available": 3}, "out of range"),
])
def test_errors_name_the_field_and_the_fix(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_spec(job(**fields))
    assert message in str(caught.value)


def test_a_job_without_command_is_refused() -> None:
    with pytest.raises(ValidationError, match="needs a command"):
        parse_spec({"kind": "job"})


def test_a_spec_must_be_a_mapping() -> None:
    with pytest.raises(ValidationError, match="must be a mapping"):
        parse_spec(["kind", "job"])


def test_priorities() -> None:
    assert [parse_priority(p) for p in ("low", "normal", "HIGH", 7, "250")] == [100, 500, 900, 7, 250]
    assert priority_name(900) == "high" and priority_name(7) == "7"


def test_names() -> None:
    assert validate_name("vision-team_2") == "vision-team_2"
    for bad in ("", "-a", "a-", "A", "a.b", "..", "a/b", "a b", 5):
        with pytest.raises(ValidationError):
            validate_name(bad)


_resources = st.fixed_dictionaries({}, optional={
    "cpu": st.sampled_from([1, 2, "500m", 0.25, 64]),
    "memory": st.sampled_from(["1GiB", "512MiB", "16GiB", "1.5GiB", "100MB"]),
    "gpu": st.one_of(st.sampled_from([0, 1, 2, 0.5, "250m"]),
                     st.sampled_from([{"count": 2, "model": ["A100", "H100"]}, {"memory": "10GiB"},
                                      {"share": 0.3, "memory": "8GiB"}, {"mig": "1g.10gb", "count": 2},
                                      {"count": 1, "memory": "40GiB"}])),
})


@settings(max_examples=150, deadline=None)
@given(st.fixed_dictionaries({"command": st.just("python x.py")}, optional={
    "name": st.sampled_from(["a", "train-1", "x_y"]),
    "project": st.sampled_from(["vision", "nlp"]),
    "priority": st.one_of(st.sampled_from(["low", "normal", "high"]), st.integers(0, 1000)),
    "replicas": st.integers(1, 8),
    "resources": _resources,
    "env": st.dictionaries(st.sampled_from(["A", "B_2", "NCCL_DEBUG"]),
                           st.one_of(st.text(st.characters(exclude_characters="\x00"), max_size=5),
                                     st.integers(), st.booleans())),
    "max_runtime": st.one_of(st.integers(1, 10**6), st.sampled_from(["6h", "1h30m", "90s"])),
    "retries": st.integers(0, 5),
    "preemptible": st.booleans(),
    "distributed": st.sampled_from(["torch", "tensorflow"]),
}))
def test_to_dict_parses_back_to_the_same_spec(data: dict[str, Any]) -> None:
    spec = parse_spec(data)
    assert parse_spec(spec.to_dict()) == spec


def test_roles_round_trip() -> None:
    spec = parse_spec(job(distributed="tensorflow", env={"A": 1}, roles={
        "ps": {"replicas": 2, "env": {"B": "2"}}, "worker": {"replicas": 3, "resources": {"gpu": 1}}}))
    assert parse_spec(spec.to_dict()) == spec
    assert spec.env_for(spec.roles[1]) == {"A": "1", "B": "2"}
