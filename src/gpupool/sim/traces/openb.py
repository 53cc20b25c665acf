"""Loader for the Alibaba GPU cluster trace v2023 ("openb").

Source: alibaba/clusterdata, cluster-trace-gpu-v2023, released with Weng et al., "Beware of Fragmentation:
Scheduling GPU-Sharing Workloads with Fragmentation Gradient Descent", USENIX ATC 2023.

Node files: `sn,cpu_milli,memory_mib,gpu,model`. Pod files:
`name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time`
(the multigpu variants carry only the first five columns). `gpu_milli` is per GPU; `gpu_spec` lists allowed
models separated by `|` (empty: any).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from gpupool.domain.errors import ValidationError
from gpupool.domain.nodes import Gpu, Node
from gpupool.domain.resources import MILLI_PER_GPU, GpuRequest, ReplicaRequest, SharingMode

NODE_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")
POD_COLUMNS = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")
POD_OPTIONAL = ("gpu_spec", "qos", "pod_phase", "creation_time", "deletion_time", "scheduled_time")
T = TypeVar("T")


class TraceError(ValidationError):
    """A malformed trace file: names the file, line and column and what was expected."""


@dataclass(frozen=True, slots=True)
class TracePod:
    """One task of a pod list. Times are seconds (None when the file has no such column or it is empty)."""

    name: str
    cpu_milli: int
    memory_mib: int
    num_gpu: int
    gpu_milli: int
    gpu_spec: tuple[str, ...] = ()
    qos: str = ""
    creation_time: float | None = None
    deletion_time: float | None = None

    @property
    def gpu_total_milli(self) -> int:
        """GPU milli the pod asks for in all (num_gpu x gpu_milli)."""
        return self.num_gpu * self.gpu_milli

    def request(self) -> ReplicaRequest:
        """The pod as a scheduler request: a share below 1000 milli of one card, else whole cards."""
        if self.num_gpu == 0:
            gpu = GpuRequest()
        elif self.num_gpu == 1 and self.gpu_milli < MILLI_PER_GPU:
            gpu = GpuRequest(share_milli=self.gpu_milli, models=self.gpu_spec)
        else:
            gpu = GpuRequest(count=self.num_gpu, models=self.gpu_spec)
        return ReplicaRequest(self.cpu_milli, self.memory_mib, gpu)


def csv_rows(path: Path, required: tuple[str, ...] = ()) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV file with a header; TraceError when it cannot be read or lacks a
    `required` column."""
    try:
        handle = path.open(newline="")
    except OSError as exc:
        raise TraceError(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise TraceError(f"{path}: line 1: missing column(s) {', '.join(missing)}; expected at least "
                             f"{','.join(required)}")
        for row in reader:
            yield reader.line_num, row


def _field(path: Path, line: int, row: dict[str, str], column: str, parse: Callable[[str], T], what: str) -> T:
    text = (row.get(column) or "").strip()
    try:
        return parse(text)
    except ValueError:
        raise TraceError(f"{path}: line {line}, column {column}: expected {what}, got {text!r}") from None


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def _optional_time(text: str) -> float | None:
    return float(text) if text else None


def load_nodes(path: Path | str, gpu_mode: SharingMode = SharingMode.SHARED) -> list[Node]:
    """Nodes of an openb node list; every card gets `gpu_mode` (shared: it takes shares and whole-GPU
    requests alike, as in the trace's cluster). The trace gives no GPU memory: cards carry 0 MiB."""
    path = Path(path)
    nodes = []
    for line, row in csv_rows(path, NODE_COLUMNS):
        name = (row.get("sn") or "").strip()
        if not name:
            raise TraceError(f"{path}: line {line}, column sn: expected a node name, got an empty value")
        cpu = _field(path, line, row, "cpu_milli", _non_negative_int, "a non-negative integer")
        memory = _field(path, line, row, "memory_mib", _non_negative_int, "a non-negative integer")
        count = _field(path, line, row, "gpu", _non_negative_int, "a non-negative integer")
        model = (row.get("model") or "").strip()
        if count and not model:
            raise TraceError(f"{path}: line {line}, column model: a node with GPUs needs a model")
        cards = tuple(Gpu(i, model, 0, gpu_mode) for i in range(count))
        nodes.append(Node(name, cpu, memory, cards))
    if not nodes:
        raise TraceError(f"{path}: no nodes")
    return nodes


def load_pods(path: Path | str) -> list[TracePod]:
    """Pods of an openb pod list (5 to 11 columns), validated row by row."""
    path = Path(path)
    pods = []
    for line, row in csv_rows(path, POD_COLUMNS):
        num_gpu = _field(path, line, row, "num_gpu", _non_negative_int, "a non-negative integer")
        gpu_milli = _field(path, line, row, "gpu_milli", _non_negative_int, "an integer 0..1000")
        if gpu_milli > MILLI_PER_GPU or (num_gpu and not gpu_milli) or (num_gpu > 1 and gpu_milli != MILLI_PER_GPU):
            raise TraceError(f"{path}: line {line}, column gpu_milli: expected 1..1000 per GPU (1000 when num_gpu > 1)"
                             f", got {gpu_milli} with num_gpu {num_gpu}")
        spec = tuple(sorted(m.strip() for m in (row.get("gpu_spec") or "").split("|") if m.strip()))
        pods.append(TracePod(
            name=(row.get("name") or f"pod-{line}").strip(),
            cpu_milli=_field(path, line, row, "cpu_milli", _non_negative_int, "a non-negative integer"),
            memory_mib=_field(path, line, row, "memory_mib", _non_negative_int, "a non-negative integer"),
            num_gpu=num_gpu, gpu_milli=gpu_milli if num_gpu else 0, gpu_spec=spec,
            qos=(row.get("qos") or "").strip(),
            creation_time=_field(path, line, row, "creation_time", _optional_time, "seconds"),
            deletion_time=_field(path, line, row, "deletion_time", _optional_time, "seconds"),
        ))
    if not pods:
        raise TraceError(f"{path}: no pods")
    return pods
