"""Placer: one replica on the best node, and whole gangs all-or-nothing with topology preferences."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpupool.domain.nodes import RACK_LABEL
from gpupool.domain.resources import ReplicaRequest
from gpupool.scheduler.placement.base import PlacementPolicy
from gpupool.scheduler.placement.cards import choose_mig_instances, choose_whole_cards, share_slots
from gpupool.scheduler.placement.filters import FloatArray, explain_no_fit, feasible_mask, share_on_card, share_terms
from gpupool.scheduler.snapshot import ClusterSnapshot, IntArray, Restore
from gpupool.scheduler.types import GpuAssignment, PendingWorkload, ReplicaPlacement

TOPOLOGY_WEIGHT = 10.0  # topology bonus (0..3) dominates the normalised policy score (0..1)


@dataclass(frozen=True, slots=True)
class GangResult:
    """Outcome of placing a gang: the placements (already assumed in the snapshot; `restore` undoes
    them), or `reason` why it did not fit (nothing assumed)."""

    placements: tuple[ReplicaPlacement, ...] = ()
    restore: Restore | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        """True when the gang was placed."""
        return self.restore is not None


class Placer:
    """Places replicas with a policy. `gang_topology` packs multi-replica gangs onto fewest nodes, then one
    rack; `avoid_gpu_nodes` keeps CPU-only replicas off GPU nodes unless nothing else fits."""

    def __init__(self, policy: PlacementPolicy, gang_topology: bool = True, avoid_gpu_nodes: bool = True) -> None:
        self.policy = policy
        self.gang_topology = gang_topology
        self.avoid_gpu_nodes = avoid_gpu_nodes

    def place_replica(self, snap: ClusterSnapshot, request: ReplicaRequest, role: str = "worker", ordinal: int = 0,
                      bonus: FloatArray | None = None) -> ReplicaPlacement | None:
        """The best placement of one replica now (not assumed), or None when no node can take it."""
        rows = feasible_mask(snap, request, self.avoid_gpu_nodes).nonzero()[0]  # 1-D: flatnonzero without its wrappers
        if rows.size == 0:
            return None
        scored = self.policy.score(snap, request, rows)
        if bonus is None:
            best = scored.top()
        else:
            scores = _normalised(scored.all_scores()) + TOPOLOGY_WEIGHT * bonus[rows]
            best = int(np.argmax(scores))
        column = None if scored.share_columns is None else int(scored.share_columns[best])
        placement = self._build(snap, int(rows[best]), request, role, ordinal, column)
        if placement is not None:
            return placement
        if bonus is None:
            scores = scored.all_scores()
        for k in np.argsort(-scores, kind="stable")[1:]:  # rare: a node passed the filter but its cards do not
            column = None if scored.share_columns is None else int(scored.share_columns[k])
            placement = self._build(snap, int(rows[k]), request, role, ordinal, column)
            if placement is not None:
                return placement
        return None

    def _build(self, snap: ClusterSnapshot, row: int, request: ReplicaRequest, role: str, ordinal: int,
               column: int | None) -> ReplicaPlacement | None:
        gpu = request.gpu
        gpus: tuple[GpuAssignment, ...] | None = ()
        if gpu.kind == "whole":
            gpus = choose_whole_cards(snap, row, gpu)
        elif gpu.kind == "mig":
            gpus = choose_mig_instances(snap, row, gpu)
        elif gpu.kind == "share" and column is not None and (card := share_on_card(snap, gpu, row, column)):
            gpus = (snap.gpu_assignment(row, column, *card),)  # the card the policy chose takes it: no row scan
        elif gpu.kind == "share":
            terms = share_terms(snap, gpu, np.array([row]))
            if not terms.fits.any():
                return None
            if column is None or not terms.fits[0, column]:
                column = self.policy.choose_share_card(snap, row, request, terms)
            gpus = (snap.gpu_assignment(row, column, int(terms.milli[0, column]), int(terms.memory[0, column])),)
        if gpus is None:
            return None
        return ReplicaPlacement(snap.nodes[row].name, request.cpu_milli, request.memory_mib, gpus, role, ordinal)

    def place_gang(self, snap: ClusterSnapshot, workload: PendingWorkload, explain: bool = True) -> GangResult:
        """Place the workload's replicas all-or-nothing (at least `gang_size` of them) and assume them.
        With `explain=False` (what-if trials that only need yes or no) the failure reason is left empty:
        building it costs more than the trial itself on a large pool."""
        placed: list[ReplicaPlacement] = []
        used_rows: set[int] = set()
        first_failure = ""
        total = workload.replica_count
        for group in workload.groups:
            for ordinal in range(group.count):
                remaining = group.count - ordinal
                bonus = self._topology_bonus(snap, group.request, used_rows, remaining) if total > 1 else None
                placement = self.place_replica(snap, group.request, group.role, ordinal, bonus)
                if placement is None:
                    member = f"{group.role} {ordinal} of {total}: " if total > 1 else ""
                    if explain and not first_failure:
                        first_failure = member + explain_no_fit(snap, group.request)
                    if workload.gang_size >= total:
                        return self._undo(snap, placed, first_failure, total)
                    continue
                snap.assume(placement)
                placed.append(placement)
                used_rows.add(snap.index_of(placement.node))
        if len(placed) < workload.gang_size:
            return self._undo(snap, placed, first_failure, total)
        return GangResult(tuple(placed), _forgetter(snap, placed))

    @staticmethod
    def _undo(snap: ClusterSnapshot, placed: list[ReplicaPlacement], failure: str, total: int) -> GangResult:
        for p in reversed(placed):
            snap.forget(p)
        prefix = f"gang of {total}: only {len(placed)} replicas fit together; " if total > 1 else ""
        return GangResult(reason=prefix + failure)

    def _topology_bonus(self, snap: ClusterSnapshot, request: ReplicaRequest, used_rows: set[int],
                        remaining: int) -> FloatArray | None:
        if not self.gang_topology:
            return None
        if not used_rows:  # the first replica: where most of the group fits, then the rack holding most
            fit = np.minimum(_replicas_fitting(snap, request), remaining)
            # the rack term stays below one step of the node term (1 / remaining)
            rack = np.minimum(_rack_totals(snap, fit), remaining)
            bonus: FloatArray = fit / max(remaining, 1) + rack / (max(remaining, 1) * (remaining + 1))
            return bonus
        bonus = np.zeros(len(snap))
        racks = _racks(snap)
        used_racks = {racks[r] for r in used_rows if racks[r] is not None}
        if used_racks:
            bonus += np.array([rack in used_racks for rack in racks], dtype=np.float64)
        bonus[list(used_rows)] += 2.0
        return bonus


def _forgetter(snap: ClusterSnapshot, placed: list[ReplicaPlacement]) -> Restore:
    def restore() -> None:
        for p in reversed(placed):
            snap.forget(p)

    return restore


def _normalised(scores: FloatArray) -> FloatArray:
    low, high = float(scores.min()), float(scores.max())
    if high - low <= 0 or not np.isfinite(high - low):
        return np.zeros_like(scores, dtype=np.float64)
    result: FloatArray = (scores - low) / (high - low)
    return result


def _replicas_fitting(snap: ClusterSnapshot, request: ReplicaRequest) -> IntArray:
    big = np.iinfo(np.int64).max // 4
    fit = np.full(len(snap), big, dtype=np.int64)
    if request.cpu_milli:
        fit = np.minimum(fit, snap.free_cpu // request.cpu_milli)
    if request.memory_mib:
        fit = np.minimum(fit, snap.free_mem // request.memory_mib)
    gpu = request.gpu
    if gpu.kind == "whole":
        fit = np.minimum(fit, snap.full_free // gpu.count)
    elif gpu.kind == "share":
        fit = np.minimum(fit, share_slots(snap, gpu.share_milli or 1))
    elif gpu.kind == "mig":
        fit = np.minimum(fit, 1)
    return np.maximum(fit, 0)


def _rack_totals(snap: ClusterSnapshot, fit: IntArray) -> IntArray:
    """Per node: `fit` summed over the nodes of its rack (its own `fit` when it has no rack label)."""
    racks = _racks(snap)
    totals: dict[str, int] = {}
    for rack, value in zip(racks, fit.tolist(), strict=True):
        if rack is not None:
            totals[rack] = totals.get(rack, 0) + value
    return np.array([totals[r] if r is not None else f for r, f in zip(racks, fit.tolist(), strict=True)],
                    dtype=np.int64)


def _racks(snap: ClusterSnapshot) -> list[str | None]:
    racks: list[str | None] | None = snap.__dict__.get("_racks")
    if racks is None:
        racks = [n.labels.get(RACK_LABEL) for n in snap.nodes]
        snap.__dict__["_racks"] = racks
    return racks
