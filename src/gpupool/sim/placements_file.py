"""The placements file of the inflation experiment, and an independent re-check of it.

One CSV row per sampled pod, in placement order: `seq,pod,node,gpus`. `pod` is the trace pod name, `node`
is empty when the pod was dropped, and `gpus` is `index:milli` pairs joined by `;` (empty for CPU-only
pods). `verify_placements` re-reads it against the node and pod lists with plain Python (no scheduler
code): every placement must fit, and it recomputes the allocation curve from scratch.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gpupool.domain.nodes import Node
from gpupool.sim.inflation import PlacementRecord, unallocated_at
from gpupool.sim.traces.openb import TracePod

HEADER = ("seq", "pod", "node", "gpus")


def write_placements(records: Iterable[PlacementRecord], path: Path | str) -> None:
    """Write the records as the placements CSV."""
    with Path(path).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for r in records:
            p = r.placement
            gpus = ";".join(f"{g.index}:{g.milli}" for g in p.gpus) if p is not None else ""
            writer.writerow((r.seq, r.pod, p.node if p is not None else "", gpus))


@dataclass
class VerifyReport:
    """Outcome of a re-check: problems found (empty: all feasible) and the recomputed curve."""

    problems: list[str] = field(default_factory=list)
    arrived_pct: list[float] = field(default_factory=list)
    allocated_pct: list[float] = field(default_factory=list)

    def unallocated_at(self, arrived: float) -> float | None:
        """100 - allocated% where arrived% first reaches `arrived` (as the experiment itself reads it)."""
        return unallocated_at(self.arrived_pct, self.allocated_pct, arrived)


@dataclass
class _Free:
    cpu: int
    memory: int
    model: str
    gpus: list[int]


def verify_placements(nodes: Sequence[Node], pods: Sequence[TracePod], path: Path | str) -> VerifyReport:
    """Re-check a placements file: no GPU over 1000 milli, CPU and memory within node capacity, gpu_spec
    respected, whole-GPU pods on fully free cards, a pod's GPUs all on its one node."""
    free = {n.name: _Free(n.cpu_milli, n.memory_mib, n.gpus[0].model if n.gpus else "",
                          [1000] * len(n.gpus)) for n in nodes}
    by_name = {p.name: p for p in pods}
    capacity = 1000 * sum(len(n.gpus) for n in nodes)
    report = VerifyReport()
    arrived = allocated = 0
    with Path(path).open(newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            pod = by_name.get(row["pod"])
            if pod is None:
                report.problems.append(f"line {line}: unknown pod {row['pod']!r}")
                continue
            arrived += pod.num_gpu * pod.gpu_milli
            if row["node"]:
                problem = _take(free, pod, row["node"], row["gpus"])
                if problem:
                    report.problems.append(f"line {line} ({pod.name} on {row['node']}): {problem}")
                else:
                    allocated += pod.num_gpu * pod.gpu_milli
            report.arrived_pct.append(100.0 * arrived / capacity)
            report.allocated_pct.append(100.0 * allocated / capacity)
    return report


def _take(free: dict[str, _Free], pod: TracePod, node: str, gpus_text: str) -> str | None:
    state = free.get(node)
    if state is None:
        return "unknown node"
    pairs = [tuple(int(x) for x in item.split(":")) for item in gpus_text.split(";") if item]
    if pod.gpu_spec and state.model not in pod.gpu_spec:
        return f"GPU model {state.model} not in gpu_spec {'|'.join(pod.gpu_spec)}"
    if len(pairs) != pod.num_gpu or len({i for i, _ in pairs}) != len(pairs):
        return f"expected {pod.num_gpu} distinct GPUs, got {gpus_text!r}"
    if state.cpu < pod.cpu_milli or state.memory < pod.memory_mib:
        return "not enough CPU or memory left on the node"
    for index, milli in pairs:
        if not 0 <= index < len(state.gpus) or milli != pod.gpu_milli:
            return f"bad GPU entry {index}:{milli}"
        if state.gpus[index] < milli or (milli == 1000 and state.gpus[index] != 1000):
            return f"GPU {index} has {state.gpus[index]} milli free, needs {milli}"
    state.cpu -= pod.cpu_milli
    state.memory -= pod.memory_mib
    for index, milli in pairs:
        state.gpus[index] -= milli
    return None
