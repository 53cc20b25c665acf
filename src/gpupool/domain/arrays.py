"""Job arrays: `array:` in a job spec makes one submit create one task per index.

```yaml
kind: job
name: render
array: 0-999%20          # tasks 0..999, at most 20 at once
command: python render.py --frame {{array.index}}
```

Grammar (Slurm's `--array`): comma-separated items, each an index `7`, a range `0-999`, or a range with a
step `0-999:10`; an optional `%N` at the end caps how many tasks run at once. Every task is an ordinary
job with the spec's command (with `{{array.index}}` replaced by its index) and `GPUPOOL_ARRAY_INDEX` in its
environment. Pure: no I/O; the server stores the tasks (`server/services/arrays.py`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gpupool.domain.display import MILLI_PER_GPU
from gpupool.domain.errors import ValidationError
from gpupool.domain.nodes import Node
from gpupool.domain.resources import ReplicaRequest
from gpupool.domain.status import WorkloadStatus

# The most tasks one array may have: accepting the largest array must stay under 2 s (benchmarks/control_plane:
# 10,000 tasks measured at 1.2 s on SQLite and 1.6 s on PostgreSQL, p50, on a loaded 2-vCPU machine), and
# 10,000 is ten times Slurm's default MaxArraySize (1001).
MAX_ARRAY_TASKS = 10_000
# The largest index: six digits, so an index names a file or a frame of any array that fits MAX_ARRAY_TASKS
# with a step of up to 100.
MAX_ARRAY_INDEX = 999_999
INDEX_PLACEHOLDER = re.compile(r"\{\{\s*array\.index\s*\}\}")
ARRAY_ENV = "GPUPOOL_ARRAY_INDEX"
ARRAY_KIND = "array"  # the kind of an array's own row; its tasks are `job` rows naming it as parent
_ITEM = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")
_EXAMPLE = "e.g. array: 0-99, 0-99:10, 1,5,9 or 0-99%20"


@dataclass(frozen=True, slots=True)
class ArraySpec:
    """The tasks of an array: their indices (ascending, distinct), the cap on tasks at once (None: no cap),
    and the text they were written as (canonical: without spaces)."""

    indices: tuple[int, ...]
    limit: int | None
    text: str

    @property
    def size(self) -> int:
        """How many tasks."""
        return len(self.indices)


def parse_array(value: Any, field_name: str = "array") -> ArraySpec:
    """Parse `array:` text such as `0-999:10%20`; ValidationError saying what is wrong and how to write it."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValidationError(f"expected indices as text, {_EXAMPLE}", field_name)
    if isinstance(value, int):
        raise ValidationError(
            f"a bare number names one task; write 0-{max(value - 1, 0)} for {value} tasks, or '{value}' (quoted) "
            f"for task {value} alone",
            field_name,
        )
    text = "".join(value.split())
    body, limit = _split_limit(text, field_name)
    if not body:
        raise ValidationError(f"no indices given; {_EXAMPLE}", field_name)
    indices: list[int] = []
    for item in body.split(","):
        indices.extend(_parse_item(item, field_name, len(indices)))
    seen: set[int] = set()
    for index in indices:
        if index in seen:
            raise ValidationError(f"index {index} is listed twice; name each task once", field_name)
        seen.add(index)
    return ArraySpec(tuple(sorted(indices)), limit, text)


def _split_limit(text: str, field_name: str) -> tuple[str, int | None]:
    if "%" not in text:
        return text, None
    body, _, cap = text.rpartition("%")
    if not cap.isdigit():
        raise ValidationError(f"after % comes how many tasks may run at once, e.g. %20; got {cap!r}", field_name)
    limit = int(cap)
    if limit == 0:
        raise ValidationError("a cap of %0 would never run a task; write %1 or more, or leave the cap out", field_name)
    return body, limit


def _parse_item(item: str, field_name: str, count_before: int) -> list[int]:
    match = _ITEM.match(item)
    if match is None:
        raise ValidationError(f"{item!r} is not an index, a range or a range with a step; {_EXAMPLE}", field_name)
    start = int(match.group(1))
    end = int(match.group(2)) if match.group(2) is not None else start
    step = int(match.group(3)) if match.group(3) is not None else 1
    if end < start:
        raise ValidationError(f"the range {start}-{end} runs backwards; write {end}-{start}", field_name)
    if end > MAX_ARRAY_INDEX:
        raise ValidationError(f"index {end} is too large; indices are 0..{MAX_ARRAY_INDEX}", field_name)
    if step == 0:
        raise ValidationError(f"the step of {item} is 0; use a step of 1 or more", field_name)
    count = (end - start) // step + 1
    if count_before + count > MAX_ARRAY_TASKS:
        raise ValidationError(
            f"more than {MAX_ARRAY_TASKS} tasks; at most {MAX_ARRAY_TASKS} per array (the server accepts that "
            "many in under 2 s); split the work into several arrays or use a step",
            field_name,
        )
    return list(range(start, end + 1, step))


def task_spec(canonical: Mapping[str, Any], index: int) -> dict[str, Any]:
    """The spec of task `index`: the array's spec without `array:`, `{{array.index}}` replaced by the index in
    the command and in the roles' commands."""
    out = {k: v for k, v in canonical.items() if k != "array"}
    if isinstance(out.get("command"), str):
        out["command"] = substitute_index(out["command"], index)
    roles = out.get("roles")
    if isinstance(roles, Mapping):
        out["roles"] = {
            name: (
                {**role, "command": substitute_index(role["command"], index)}
                if isinstance(role, Mapping) and isinstance(role.get("command"), str)
                else role
            )
            for name, role in roles.items()
        }
    return out


def substitute_index(command: str, index: int) -> str:
    """`command` with every `{{array.index}}` (spaces inside the braces allowed) replaced by `index`."""
    return INDEX_PLACEHOLDER.sub(str(index), command)


_S = WorkloadStatus
_ACTIVE = (_S.SCHEDULED, _S.STARTING, _S.RUNNING, _S.PREEMPTED)


def array_status(counts: Mapping[str, int]) -> tuple[WorkloadStatus, str]:
    """The status an array should have given how many of its tasks are in each status, and why: pending
    while no task started (cancelled ones aside); running while any task runs or waits after one started
    (the array does not go back to pending, see `server/services/arrays.status_moves`); once all ended,
    succeeded when all succeeded, failed when any failed or was lost, else cancelled."""
    total = sum(counts.values())
    ended = sum(n for s, n in counts.items() if _S(s).is_terminal())
    succeeded = counts.get(_S.SUCCEEDED.value, 0)
    if total and ended == total:
        bad = counts.get(_S.FAILED.value, 0) + counts.get(_S.LOST.value, 0)
        summary = describe_counts(counts)
        if succeeded == total:
            return _S.SUCCEEDED, f"all {total} tasks succeeded"
        if bad:
            return _S.FAILED, f"{bad} of {total} tasks failed or were lost ({summary})"
        return _S.CANCELLED, f"all tasks ended, some cancelled ({summary})"
    if any(counts.get(s.value, 0) for s in (*_ACTIVE, _S.SUCCEEDED, _S.FAILED, _S.LOST)):
        return _S.RUNNING, f"tasks running ({describe_counts(counts)})"
    return _S.PENDING, f"{counts.get(_S.PENDING.value, 0)} tasks waiting to be scheduled"


def describe_counts(counts: Mapping[str, int]) -> str:
    """'3 running, 17 pending' in the order of the life cycle, zero counts left out."""
    return ", ".join(f"{counts[s.value]} {s.value}" for s in _S if counts.get(s.value))


def task_slots(limit: int | None, holding: int) -> int | None:
    """How many more of an array's pending tasks the scheduler may see: None (all) without a cap, else the
    cap less the tasks that hold resources (scheduled, starting, running, preempted), at least 0."""
    return None if limit is None else max(0, limit - holding)


def pool_task_bound(nodes: Sequence[Node], groups: Sequence[tuple[int, ReplicaRequest]]) -> int | None:
    """The most tasks with these replica groups ((replicas, request) per role) the pool could ever hold at
    once: per node, the replicas of a request its whole capacity (not what is free: preemption may free it)
    fits by CPU, memory and GPU count, summed over the nodes, divided by the role's replicas; the least over
    the roles. An over-estimate by design (labels, taints, GPU models and MIG are ignored), so that a
    scheduling cycle offered this many tasks plus one places exactly what it would with all of them. None when
    a request is bounded by nothing (then every task is offered)."""
    bound: int | None = None
    for replicas, request in groups:
        total = 0
        for node in nodes:
            fits = _replicas_on(node, request)
            if fits is None:
                return None
            total += fits
        role_bound = total // max(1, replicas)
        bound = role_bound if bound is None else min(bound, role_bound)
    return bound


def _replicas_on(node: Node, request: ReplicaRequest) -> int | None:
    """How many replicas of `request` the whole node holds at most by CPU, memory and GPU count (None: no
    bound, a request of nothing or of GPU memory shares alone)."""
    gpu = request.gpu
    if not gpu.is_none and not node.gpus:
        return 0
    limits = []
    if request.cpu_milli > 0:
        limits.append(node.cpu_milli // request.cpu_milli)
    if request.memory_mib > 0:
        limits.append(node.memory_mib // request.memory_mib)
    if gpu.kind == "whole" and gpu.count > 0:
        limits.append(len(node.gpus) // gpu.count)
    elif gpu.share_milli > 0:
        limits.append(len(node.gpus) * MILLI_PER_GPU // gpu.share_milli)
    return min(limits) if limits else None
