"""Backfill: a reservation for the blocked head, and the rule that later work must not delay it.

The reservation's start is the earliest time at which the head fits if running workloads end at their
max_runtime (start_time + max_runtime_s; workloads already terminating end now; workloads without a
max_runtime are assumed never to end). The reservation
keeps a *future* snapshot: the pool at that time with the head placed. A later workload may start now only
if it will have ended by the reservation's start, or if its placement also fits the future snapshot
(so it takes nothing the head will need).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gpupool.domain.resources import ResourceVector
from gpupool.scheduler.placer import Placer
from gpupool.scheduler.snapshot import ClusterSnapshot, OverCommitError
from gpupool.scheduler.types import PendingWorkload, ReplicaPlacement, RunningWorkload


@dataclass(slots=True)
class Reservation:
    """The head's reserved start and placements, with the future snapshot used to protect them."""

    workload_id: str
    start_time: float
    placements: tuple[ReplicaPlacement, ...]
    future: ClusterSnapshot

    def admits(self, placements: Sequence[ReplicaPlacement], now: float, max_runtime_s: float | None) -> bool:
        """True when a workload starting now with `placements` does not delay the reservation; when it
        does not, its capacity is also taken from the future snapshot."""
        if max_runtime_s is not None and now + max_runtime_s <= self.start_time:
            return True
        taken: list[ReplicaPlacement] = []
        try:
            for p in placements:
                self.future.assume(p)
                taken.append(p)
        except OverCommitError:
            for p in reversed(taken):
                self.future.forget(p)
            return False
        return True


def reserve(snap: ClusterSnapshot, placer: Placer, head: PendingWorkload, running: Sequence[RunningWorkload],
            now: float) -> Reservation | None:
    """The earliest reservation for `head`, or None when it would not fit even after every bounded
    workload ended."""
    ending = sorted(((end, w.id, w) for w in running if (end := _end(w, now)) is not None),
                    key=lambda item: (item[0], item[1]))
    if not ending:
        return None
    future = snap.clone()
    need = head.nominal()
    freed = ResourceVector()
    free_now = _free_total(future)
    for end, _, workload in ending:
        for p in workload.placements:
            future.forget(p)
        freed = freed + workload.usage
        if not need.fits_within(free_now + freed):
            continue  # cheap test first: not even the totals suffice yet
        result = placer.place_gang(future, head)
        if result.restore is not None:
            return Reservation(head.id, max(end, now), result.placements, future)
    return None


def _end(workload: RunningWorkload, now: float) -> float | None:
    return now if workload.terminating else workload.expected_end()


def _free_total(snap: ClusterSnapshot) -> ResourceVector:
    s = snap.schedulable
    return ResourceVector(int(snap.free_cpu[s].sum()), int(snap.free_mem[s].sum()),
                          int(snap.free_gpu_total[s].sum()))
