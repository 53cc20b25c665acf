"""Preemption: choose the fewest, least important running workloads whose removal lets a pending one run.

Who may be a victim (never non-preemptible work, work already terminating, or work that has run less than
the profile's minimum run time):
- within the preemptor's queue: workloads of strictly lower priority;
- across queues, only to reclaim a guarantee: when the preemptor stays inside its queue's guarantee,
  workloads of queues that are borrowing (using more than their guarantee of a resource the preemptor
  needs), for as long as their queue is still borrowing.

Candidates are taken in a fixed order (lowest priority, then shortest run time, then id) and removed on a
what-if snapshot until the preemptor's gang fits and its quota allows it; then each victim is given back
(most important first) if the preemptor still fits without removing it. No preemption happens unless the
what-if proves the preemptor fits afterwards; its placement on that snapshot is returned as the nomination.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from gpupool.domain.resources import ResourceVector
from gpupool.scheduler.placer import Placer
from gpupool.scheduler.queues import QuotaBook
from gpupool.scheduler.snapshot import ClusterSnapshot
from gpupool.scheduler.types import PendingWorkload, ReplicaPlacement, RunningWorkload


@dataclass(frozen=True, slots=True)
class PreemptionPlan:
    """The victims to stop and where the preemptor will run once they are gone."""

    victims: tuple[RunningWorkload, ...]
    nominated: tuple[ReplicaPlacement, ...]


def _needed_resources(demand: ResourceVector) -> tuple[str, ...]:
    return tuple(n for n, v in zip(ResourceVector.NAMES, demand.as_tuple(), strict=True) if v > 0)


def candidates(preemptor: PendingWorkload, running: Sequence[RunningWorkload], book: QuotaBook, now: float,
               min_runtime_s: float) -> list[RunningWorkload]:
    """The running workloads that may be preempted for `preemptor`, in victim order."""
    demand = preemptor.nominal()
    reclaim = book.within_guarantee(preemptor.queue, demand)
    needed = _needed_resources(demand)
    eligible = []
    for w in running:
        if not w.preemptible or w.terminating or now - w.start_time < min_runtime_s:
            continue
        same_queue = w.queue == preemptor.queue and w.priority < preemptor.priority
        borrower = reclaim and w.queue != preemptor.queue and book.is_borrowing(w.queue, needed)
        if same_queue or borrower:
            eligible.append(w)
    eligible.sort(key=lambda w: (w.priority, -w.start_time, w.id))
    return eligible


def plan_preemption(snap: ClusterSnapshot, placer: Placer, preemptor: PendingWorkload,
                    running: Sequence[RunningWorkload], book: QuotaBook, now: float,
                    min_runtime_s: float) -> PreemptionPlan | None:
    """The victims whose removal lets `preemptor` run, or None. The snapshot and book are left unchanged."""
    pool = candidates(preemptor, running, book, now, min_runtime_s)
    if not pool:
        return None
    demand = preemptor.nominal()
    needed = _needed_resources(demand)
    removed: list[RunningWorkload] = []
    try:
        for victim in pool:
            if victim.queue != preemptor.queue and not book.is_borrowing(victim.queue, needed):
                continue  # that queue is back inside its guarantee: nothing more to reclaim from it
            _remove(snap, book, victim)
            removed.append(victim)
            if _fits(snap, placer, preemptor, book, demand):
                break
        else:
            return None
        removed = _reprieve(snap, placer, preemptor, book, demand, removed)
        result = placer.place_gang(snap, preemptor)
        if result.restore is None:  # cannot happen: _reprieve keeps a fitting set
            return None
        result.restore()
        return PreemptionPlan(tuple(removed), result.placements)
    finally:
        for victim in reversed(removed):
            _add(snap, book, victim)


def deferred_preemption(snap: ClusterSnapshot, placer: Placer, preemptor: PendingWorkload,
                        running: Sequence[RunningWorkload], book: QuotaBook, now: float,
                        min_runtime_s: float) -> str | None:
    """When `preemptor` could preempt its way in but for victims that have not run their minimum run time yet:
    which workloads it will preempt and in how many seconds (rounded up), in words; else None. The snapshot
    and book are left unchanged."""
    if min_runtime_s <= 0 or not any(now - w.start_time < min_runtime_s
                                     for w in candidates(preemptor, running, book, now, 0.0)):
        return None  # no candidate is held back by its minimum run time: nothing to wait for
    plan = plan_preemption(snap, placer, preemptor, running, book, now, 0.0)
    young = [v for v in plan.victims if now - v.start_time < min_runtime_s] if plan is not None else []
    if plan is None or not young:
        return None
    wait_s = math.ceil(max(v.start_time + min_runtime_s - now for v in young))
    ids = sorted(v.id for v in plan.victims)
    if len(ids) == 1:
        return f"will preempt workload {ids[0]} when its minimum run time ends in {wait_s} s"
    young_ids = sorted(v.id for v in young)
    if len(young_ids) == len(ids):
        when = "their minimum run times end"
    elif len(young_ids) == 1:
        when = f"the minimum run time of {young_ids[0]} ends"
    else:
        when = f"the minimum run times of {', '.join(young_ids)} end"
    return f"will preempt workloads {', '.join(ids)} when {when} in {wait_s} s"


def _reprieve(snap: ClusterSnapshot, placer: Placer, preemptor: PendingWorkload, book: QuotaBook,
              demand: ResourceVector, removed: list[RunningWorkload]) -> list[RunningWorkload]:
    kept = list(removed)
    for victim in reversed(removed):
        _add(snap, book, victim)
        if _fits(snap, placer, preemptor, book, demand):
            kept.remove(victim)
        else:
            _remove(snap, book, victim)
    return kept


def _fits(snap: ClusterSnapshot, placer: Placer, preemptor: PendingWorkload, book: QuotaBook,
          demand: ResourceVector) -> bool:
    if book.blocked_by_quota(preemptor.queue, demand) is not None:
        return False
    result = placer.place_gang(snap, preemptor)
    if result.restore is None:
        return False
    result.restore()
    return True


def _remove(snap: ClusterSnapshot, book: QuotaBook, victim: RunningWorkload) -> None:
    for p in victim.placements:
        snap.forget(p)
    book.remove(victim.queue, victim.usage)


def _add(snap: ClusterSnapshot, book: QuotaBook, victim: RunningWorkload) -> None:
    snap.assume_all(victim.placements, force=True)
    book.add(victim.queue, victim.usage)


def victim_reason(preemptor: PendingWorkload, victim: RunningWorkload) -> str:
    """Why `victim` is stopped, in words recorded on it."""
    if victim.queue == preemptor.queue:
        return (f"preempted by higher-priority {preemptor.id} (priority {preemptor.priority} > {victim.priority}) "
                f"in queue {preemptor.queue}")
    return (f"preempted: queue {victim.queue} was borrowing capacity that queue {preemptor.queue} reclaimed "
            f"for {preemptor.id}")
