"""Job arrays: the `array:` grammar, its errors, the tasks' specs, and the array's status from its tasks."""

from __future__ import annotations

from typing import Any

import pytest

from gpupool.domain.arrays import (
    MAX_ARRAY_INDEX,
    MAX_ARRAY_TASKS,
    array_status,
    describe_counts,
    parse_array,
    task_slots,
    task_spec,
)
from gpupool.domain.errors import ValidationError
from gpupool.domain.specs import JobSpec, parse_spec
from gpupool.domain.status import WorkloadStatus

S = WorkloadStatus


@pytest.mark.parametrize(
    ("text", "indices", "limit"),
    [
        ("0-4", (0, 1, 2, 3, 4), None),
        ("7", (7,), None),
        ("1,5,9", (1, 5, 9), None),
        ("0-10:5", (0, 5, 10), None),
        ("0-9:4", (0, 4, 8), None),
        ("0-2%1", (0, 1, 2), 1),
        ("9, 1-2 ,5 %20", (1, 2, 5, 9), 20),  # spaces are ignored, indices sorted
        ("3-3", (3,), None),
        (f"0-{MAX_ARRAY_TASKS - 1}", tuple(range(MAX_ARRAY_TASKS)), None),
        (f"{MAX_ARRAY_INDEX}", (MAX_ARRAY_INDEX,), None),
    ],
)
def test_the_grammar(text: str, indices: tuple[int, ...], limit: int | None) -> None:
    spec = parse_array(text)
    assert (spec.indices, spec.limit, spec.size) == (indices, limit, len(indices))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5-2", "the range 5-2 runs backwards; write 2-5"),
        ("0-9%0", "a cap of %0 would never run a task; write %1 or more"),
        ("0-9%x", "after % comes how many tasks may run at once"),
        ("0-9:0", "the step of 0-9:0 is 0"),
        (f"0-{MAX_ARRAY_TASKS}", f"at most {MAX_ARRAY_TASKS} per array (the server accepts that many"),
        ("0-5000,6000-12000", f"more than {MAX_ARRAY_TASKS} tasks"),
        (f"0-{MAX_ARRAY_INDEX + 1}", f"indices are 0..{MAX_ARRAY_INDEX}"),
        ("1,2,1", "index 1 is listed twice"),
        ("0-3,2", "index 2 is listed twice"),
        ("a-b", "'a-b' is not an index, a range or a range with a step"),
        ("1-", "'1-' is not an index"),
        ("-3", "'-3' is not an index"),
        ("", "no indices given"),
        ("%4", "no indices given"),
        (10, "a bare number names one task; write 0-9 for 10 tasks, or '10' (quoted) for task 10 alone"),
        ([1, 2], "expected indices as text"),
        (True, "expected indices as text"),
    ],
)
def test_grammar_errors_say_what_is_wrong_and_how_to_write_it(value: Any, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_spec({"command": "x", "array": value})
    assert message in str(caught.value) and caught.value.field == "array"


def test_an_array_job_round_trips_and_only_jobs_take_it() -> None:
    spec = parse_spec({"name": "render", "command": "r --frame {{array.index}}", "array": "0-99 %20"})
    assert isinstance(spec, JobSpec) and spec.array is not None and spec.array.size == 100
    assert spec.to_dict()["array"] == "0-99%20" and parse_spec(spec.to_dict()) == spec
    with pytest.raises(ValidationError, match="unknown field"):
        parse_spec({"kind": "notebook", "array": "0-3"})


def test_a_task_spec_has_its_index_in_the_commands_and_no_array() -> None:
    spec = parse_spec(
        {
            "command": "r {{array.index}} {{ array.index }}",
            "array": "0-3",
            "roles": {"chief": {"command": "c {{array.index}}"}, "worker": {"replicas": 2}},
        }
    )
    task = task_spec(spec.to_dict(), 7)
    assert "array" not in task and task["command"] == "r 7 7"
    assert task["roles"]["chief"]["command"] == "c 7" and "command" not in task["roles"]["worker"]
    assert parse_spec(task) == parse_spec({**spec.to_dict(), "command": "r 7 7", "array": None, "roles": task["roles"]})


@pytest.mark.parametrize(
    ("counts", "status", "reason"),
    [
        ({"pending": 5}, S.PENDING, "5 tasks waiting"),
        ({"pending": 4, "cancelled": 1}, S.PENDING, "4 tasks waiting"),  # nothing started yet
        ({"pending": 4, "scheduled": 1}, S.RUNNING, "4 pending, 1 scheduled"),
        ({"pending": 4, "succeeded": 1}, S.RUNNING, "tasks running"),
        ({"pending": 4, "preempted": 1}, S.RUNNING, "tasks running"),
        ({"succeeded": 5}, S.SUCCEEDED, "all 5 tasks succeeded"),
        ({"succeeded": 3, "failed": 1, "lost": 1}, S.FAILED, "2 of 5 tasks failed or were lost"),
        ({"succeeded": 3, "failed": 1, "running": 1}, S.RUNNING, "1 running"),
        ({"succeeded": 4, "cancelled": 1}, S.CANCELLED, "4 succeeded, 1 cancelled"),
        ({"cancelled": 2, "failed": 1}, S.FAILED, "1 of 3"),
    ],
)
def test_the_array_status_follows_its_tasks(counts: dict[str, int], status: WorkloadStatus, reason: str) -> None:
    assert array_status(counts)[0] == status and reason in array_status(counts)[1]


def test_counts_read_in_life_cycle_order() -> None:
    assert (
        describe_counts({"succeeded": 2, "pending": 1, "running": 3, "failed": 0})
        == "1 pending, 3 running, 2 succeeded"
    )


@pytest.mark.parametrize(
    ("limit", "holding", "slots"),
    [
        (None, 0, None),
        (None, 50, None),
        (3, 0, 3),
        (3, 2, 1),
        (3, 3, 0),
        (3, 5, 0),  # more hold resources than the cap (it was lowered): nothing more
    ],
)
def test_slots_are_the_cap_less_the_tasks_holding_resources(limit: int | None, holding: int, slots: int | None) -> None:
    assert task_slots(limit, holding) == slots
