"""The gpupool workload trace format: CSV or JSON Lines, one workload per row.

Fields (CSV header names = JSON keys):

| field | required | meaning |
|---|---|---|
| `arrival` | yes | submission time, seconds from the start of the trace |
| `duration` | yes | how long the workload runs once started, seconds (or `90s`, `30m`, `6h`) |
| `name` | no | unique id (default `line-<n>`) |
| `queue` | no | queue / project (default `default`) |
| `priority` | no | integer, higher first (default 0) |
| `replicas` | no | replicas in the gang (default 1) |
| `cpu`, `memory` | no | per replica: `4`, `500m`; `16GiB` |
| `gpu` | no | per replica: `2`, `0.5`, `500m`; in JSON also a mapping such as `{count: 2, model: [A100]}` |
| `gpu_model` | no | allowed models separated by `|` (CSV form of `gpu.model`) |
| `max_runtime` | no | declared limit (used by backfill), seconds or `6h` |
| `preemptible` | no | `true`/`false` (default true) |

Errors name the file, the line and the field, and say what was expected.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from gpupool.domain.errors import ValidationError, reject_unknown_keys
from gpupool.domain.resources import ReplicaRequest, parse_cpu, parse_duration, parse_gpu, parse_memory
from gpupool.sim.traces.openb import TraceError, csv_rows
from gpupool.sim.workloads import SimWorkload

FIELDS = ("name", "arrival", "duration", "queue", "priority", "replicas", "cpu", "memory", "gpu", "gpu_model",
          "max_runtime", "preemptible")


def load_workloads(path: Path | str) -> list[SimWorkload]:
    """Workloads of a .csv or .jsonl/.json-lines trace, validated row by row, sorted by arrival then name."""
    path = Path(path)
    rows = _jsonl_rows(path) if path.suffix.lower() in (".jsonl", ".ndjson") else _csv_rows(path)
    workloads, names = [], set()
    for line, row in rows:
        try:
            workload = _workload(line, row)
        except ValidationError as exc:
            raise TraceError(f"{path}: line {line}, {exc}") from None
        if workload.name in names:
            raise TraceError(f"{path}: line {line}, name: {workload.name!r} appears twice; names must be unique")
        names.add(workload.name)
        workloads.append(workload)
    if not workloads:
        raise TraceError(f"{path}: no workloads")
    return sorted(workloads, key=lambda w: (w.arrival_s, w.name))


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for line, row in csv_rows(path):
        yield line, {k: v for k, v in row.items() if k is not None and v not in (None, "")}


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise TraceError(f"cannot read {path}: {exc.strerror}") from None
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TraceError(f"{path}: line {number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise TraceError(f"{path}: line {number}: expected a JSON object with arrival, duration, ...")
        yield number, row


def _workload(line: int, row: Mapping[str, Any]) -> SimWorkload:
    reject_unknown_keys(dict(row), FIELDS)
    for key in ("arrival", "duration"):
        if key not in row:
            raise ValidationError("missing; every workload needs arrival and duration (seconds)", key)
    gpu = parse_gpu(_number_or_text(row.get("gpu", 0)), "gpu")
    if "gpu_model" in row:
        if gpu.is_none:
            raise ValidationError("a GPU model was given but no gpu amount; add gpu or remove gpu_model", "gpu_model")
        models = tuple(sorted(m.strip() for m in str(row["gpu_model"]).split("|") if m.strip()))
        gpu = dataclasses.replace(gpu, models=models)
    request = ReplicaRequest(parse_cpu(_number_or_text(row.get("cpu", 0)), "cpu"),
                             parse_memory(_number_or_text(row.get("memory", 0)), "memory"), gpu)
    return SimWorkload(
        name=str(row.get("name") or f"line-{line}"),
        arrival_s=_seconds(row["arrival"], "arrival", allow_zero=True),
        duration_s=float(parse_duration(_number_or_text(row["duration"]), "duration")),
        request=request,
        queue=str(row.get("queue") or "default"),
        priority=_integer(row.get("priority", 0), "priority"),
        replicas=_integer(row.get("replicas", 1), "replicas", minimum=1),
        max_runtime_s=float(parse_duration(_number_or_text(row["max_runtime"]), "max_runtime"))
        if "max_runtime" in row else None,
        preemptible=_boolean(row.get("preemptible", True), "preemptible"),
    )


def _number_or_text(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            return float(text)
        except ValueError:
            return text
    return value


def _seconds(value: Any, field: str, allow_zero: bool = False) -> float:
    number = _number_or_text(value)
    if isinstance(number, bool) or not isinstance(number, int | float) or number < 0 or (
            number == 0 and not allow_zero):
        raise ValidationError(f"expected seconds (a number >= 0), got {value!r}", field)
    return float(number)


def _integer(value: Any, field: str, minimum: int | None = None) -> int:
    number = _number_or_text(value)
    if isinstance(number, bool) or not isinstance(number, int) or (minimum is not None and number < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValidationError(f"expected an integer{bound}, got {value!r}", field)
    return number


def _boolean(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0"):
        return False
    raise ValidationError(f"expected true or false, got {value!r}", field)
