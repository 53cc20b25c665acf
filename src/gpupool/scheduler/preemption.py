"""Preemption: choose the fewest, least important running workloads whose removal lets a pending one run.

Who may be a victim (never non-preemptible work, work already terminating, or work that has run less than
the profile's minimum run time):
- within the preemptor's queue: workloads of strictly lower priority;
- across queues, to reclaim a guarantee: when the preemptor stays inside its queue's guarantee, workloads
  of queues that are borrowing (using more than their guarantee of a resource the preemptor needs), for as
  long as their queue is still borrowing and never so far that their queue drops below its own guarantee;
- across queues, with fair-share preemption switched on: workloads of a queue whose weighted dominant share
  is above the preemptor queue's share now and stays at or above it (with the preemptor counted) once the
  victim is gone, and not below its own guarantee. That rules out an immediate loop: preempting back would
  need the victim's queue to be strictly below the preemptor's, which the second condition excludes. Shares
  still move with work that arrives and ends, so two workloads could later take turns at preempting each
  other (for fair share both ways, or one reclaiming a guarantee and the other taking it back for fair
  share as the victim queue's other work ends and starts); a workload therefore never preempts for fair
  share one that preempted it from another queue (`PendingWorkload.fair_share_preempted_by`). Priority and
  reclaim, which are firm promises, are not held back.

Victim order: first the workloads of the queue most above its guarantee (borrowers before owners); among
other queues' workloads the smallest first (then priority, shortest run time, id), inside the preemptor's
own queue the lowest priority first (then shortest run time, id). Candidates are removed on a what-if
snapshot until the preemptor's gang fits and its quota admits the exact usage of that placement (the same
check as at bind time); then each victim is given back (the last removed first) if the preemptor still fits
without it. No preemption happens unless the what-if proves the preemptor fits afterwards; its placement on
that snapshot is returned as the nomination.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from gpupool.domain.resources import ResourceVector
from gpupool.scheduler.placement.filters import feasible_mask
from gpupool.scheduler.placer import Placer
from gpupool.scheduler.queues import QuotaBook
from gpupool.scheduler.snapshot import ClusterSnapshot, Restore
from gpupool.scheduler.types import PendingWorkload, ReplicaPlacement, RunningWorkload, placements_usage


@dataclass(frozen=True, slots=True)
class PreemptionPlan:
    """The victims to stop and where the preemptor will run once they are gone; `fair_share`: the ids of the
    victims taken for fair share (the others by priority or to reclaim a guarantee)."""

    victims: tuple[RunningWorkload, ...]
    nominated: tuple[ReplicaPlacement, ...]
    fair_share: frozenset[str] = frozenset()


PRIORITY, RECLAIM, FAIR_SHARE = "priority", "reclaim", "fair share"  # the rules a victim is taken by


@dataclass(frozen=True, slots=True)
class _Rules:
    preemptor: PendingWorkload
    demand: ResourceVector
    needed: tuple[str, ...]
    reclaim: bool
    fair_share: bool

    def allows(self, victim: RunningWorkload, book: QuotaBook) -> bool:
        """May `victim` be taken now (with the book as it stands after earlier removals)?"""
        return self.basis(victim, book) is not None

    def basis(self, victim: RunningWorkload, book: QuotaBook) -> str | None:
        """The rule that lets `victim` be taken now: PRIORITY, RECLAIM or FAIR_SHARE; None when none does."""
        if victim.queue == self.preemptor.queue:
            return PRIORITY if victim.priority < self.preemptor.priority else None
        # reclaim is for the resources the preemptor needs that the victim's queue borrows: only those must
        # not fall below the victim queue's guarantee (freeing CPU it holds at its guarantee as a side effect
        # of giving back a borrowed GPU takes nothing it is owed: it can use that CPU again at once); its GPU
        # guarantee holds whenever the preemptor needs GPUs, also when it is reclaimed for borrowed CPU
        reclaimed = tuple(r for r in self.needed if book.is_borrowing(victim.queue, (r,)))
        kept = (*reclaimed, "gpu") if "gpu" in self.needed and "gpu" not in reclaimed else reclaimed
        if self.reclaim and reclaimed and book.keeps_guarantee_without(victim.queue, victim.usage, kept):
            return RECLAIM
        if not self.fair_share or victim.id in self.preemptor.fair_share_preempted_by \
                or not book.keeps_guarantee_without(victim.queue, victim.usage):
            return None
        zero = ResourceVector()
        fair = (book.share_with(self.preemptor.queue, zero) < book.share_with(victim.queue, zero)
                and book.share_with(victim.queue, zero - victim.usage)
                >= book.share_with(self.preemptor.queue, self.demand))
        return FAIR_SHARE if fair else None


def _needed_resources(demand: ResourceVector) -> tuple[str, ...]:
    return tuple(n for n, v in zip(ResourceVector.NAMES, demand.as_tuple(), strict=True) if v > 0)


def _rules(preemptor: PendingWorkload, demand: ResourceVector | None, book: QuotaBook,
           fair_share: bool) -> _Rules:
    demand = preemptor.nominal() if demand is None else demand
    return _Rules(preemptor, demand, _needed_resources(demand), book.within_guarantee(preemptor.queue, demand),
                  fair_share)


def candidates(preemptor: PendingWorkload, running: Sequence[RunningWorkload], book: QuotaBook, now: float,
               min_runtime_s: float, *, demand: ResourceVector | None = None,
               fair_share: bool = False) -> list[RunningWorkload]:
    """The running workloads that may be preempted for `preemptor`, in victim order (module docstring).
    `demand` is what the preemptor counts against quotas (default: its nominal request)."""
    return _candidates(_rules(preemptor, demand, book, fair_share), running, book, now, min_runtime_s)


def _candidates(rules: _Rules, running: Sequence[RunningWorkload], book: QuotaBook, now: float,
                min_runtime_s: float) -> list[RunningWorkload]:
    eligible = [w for w in running
                if w.preemptible and not w.terminating and now - w.start_time >= min_runtime_s
                and rules.allows(w, book)]
    over = {q: book.over_guarantee_share(q, rules.needed) for q in sorted({w.queue for w in eligible})}

    def order(w: RunningWorkload) -> tuple[float, int, float, float, float, str]:
        if w.queue == rules.preemptor.queue:
            return (-over[w.queue], 1, w.priority, -w.start_time, 0.0, w.id)
        size = w.usage.gpu_milli if "gpu" in rules.needed else w.usage.cpu_milli
        return (-over[w.queue], 0, size, w.priority, -w.start_time, w.id)

    eligible.sort(key=order)
    return eligible


def plan_preemption(snap: ClusterSnapshot, placer: Placer, preemptor: PendingWorkload,
                    running: Sequence[RunningWorkload], book: QuotaBook, now: float,
                    min_runtime_s: float, *, demand: ResourceVector | None = None, fair_share: bool = False,
                    max_victims: int | None = None,
                    cache: dict[object, list[RunningWorkload]] | None = None) -> PreemptionPlan | None:
    """The victims whose removal lets `preemptor` run, or None (also when more than `max_victims` would be
    needed). The snapshot and book are left unchanged. `cache` (one per cycle) keeps the ordered candidates
    per preemptor queue, priority, needed resources and fair-share preemptors: later plans skip those since
    asked to stop, and every cross-queue candidate is checked against the rules again when it is reached."""
    rules = _rules(preemptor, demand, book, fair_share)
    key = (preemptor.queue, preemptor.priority, rules.needed, rules.reclaim, preemptor.fair_share_preempted_by)
    pool = cache.get(key) if cache is not None else None
    if pool is None:
        pool = _candidates(rules, running, book, now, min_runtime_s)
        if cache is not None:
            cache[key] = pool
    stopping = {w.id for w in running if w.terminating}
    pool = [w for w in pool if w.id not in stopping] if stopping else pool
    if not pool:
        return None
    trial = _Trial(snap, placer, preemptor, book)
    removed: list[RunningWorkload] = []
    for_fair_share: set[str] = set()
    try:
        fit = None
        for victim in pool:
            if victim.queue != preemptor.queue:
                basis = rules.basis(victim, book)
                if basis is None:
                    continue  # that queue is back inside its guarantee or its fair share: nothing more from it
                if basis == FAIR_SHARE:
                    for_fair_share.add(victim.id)
            trial.remove(victim)
            removed.append(victim)
            if trial.may_fit_after(victim):
                fit = trial.fit()
                if fit is not None:
                    break
        if fit is None:
            return None
        removed, fit = trial.reprieve(removed, fit)
        if max_victims is not None and len(removed) > max_victims:
            return None
        kept = frozenset(v.id for v in removed)
        return PreemptionPlan(tuple(removed), trial.nomination(fit), frozenset(for_fair_share & kept))
    finally:
        for victim in reversed(removed):
            trial.add(victim)


def deferred_preemption(snap: ClusterSnapshot, placer: Placer, preemptor: PendingWorkload,
                        running: Sequence[RunningWorkload], book: QuotaBook, now: float,
                        min_runtime_s: float, *, demand: ResourceVector | None = None,
                        fair_share: bool = False) -> str | None:
    """When `preemptor` could preempt its way in but for victims that have not run their minimum run time yet:
    which workloads it will preempt and in how many seconds (rounded up), in words; else None. The snapshot
    and book are left unchanged."""
    rules = _rules(preemptor, demand, book, fair_share)
    if min_runtime_s <= 0 or not any(now - w.start_time < min_runtime_s
                                     for w in _candidates(rules, running, book, now, 0.0)):
        return None  # no candidate is held back by its minimum run time: nothing to wait for
    plan = plan_preemption(snap, placer, preemptor, running, book, now, 0.0, demand=demand, fair_share=fair_share)
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


class _Trial:
    """The what-if: victims removed from (and given back to) the snapshot and the book."""

    def __init__(self, snap: ClusterSnapshot, placer: Placer, preemptor: PendingWorkload, book: QuotaBook) -> None:
        self.snap, self.placer, self.preemptor, self.book = snap, placer, preemptor, book
        self.quota_blocked = False
        self.requests = tuple({g.request: None for g in preemptor.groups})
        self.restores: dict[str, Restore] = {}

    def remove(self, victim: RunningWorkload) -> None:
        """Take `victim` out of the snapshot and the book (`add` puts it back)."""
        self.restores[victim.id] = self.snap.what_if_removed(victim.placements)
        self.book.remove(victim.queue, victim.usage)

    def add(self, victim: RunningWorkload) -> None:
        """Put back a victim taken out by `remove`."""
        self.restores.pop(victim.id)()
        self.book.add(victim.queue, victim.usage)

    def may_fit_after(self, victim: RunningWorkload) -> bool:
        """Cheap necessary condition: the preemptor can only newly fit if the victim's nodes can now host one
        of its replicas, or if it was held back by its own queue's quota and the victim is of that queue."""
        if self.quota_blocked and victim.queue == self.preemptor.queue:
            return True
        rows = [row for p in victim.placements if (row := self.snap.row_of(p.node)) is not None]
        return any(bool(feasible_mask(self.snap, r, self.placer.avoid_gpu_nodes)[rows].any())
                   for r in self.requests)

    def fit(self) -> tuple[ReplicaPlacement, ...] | None:
        """A placement of the whole gang on the what-if snapshot that its quota admits, or None."""
        result = self.placer.place_gang(self.snap, self.preemptor, explain=False)
        if result.restore is None:
            return None
        result.restore()
        self.quota_blocked = self.book.blocked_by_quota(self.preemptor.queue,
                                                        placements_usage(result.placements)) is not None
        return None if self.quota_blocked else result.placements

    def reprieve(self, removed: list[RunningWorkload],
                 fit: tuple[ReplicaPlacement, ...]) -> tuple[list[RunningWorkload], tuple[ReplicaPlacement, ...]]:
        """Give back every victim the preemptor does not need (the last removed first)."""
        kept = list(removed)
        for victim in reversed(removed):
            self.add(victim)
            again = self._still_fits(victim, fit)
            if again is not None:
                kept.remove(victim)
                fit = again
            else:
                self.remove(victim)
        return kept, fit

    def _still_fits(self, victim: RunningWorkload,
                    fit: tuple[ReplicaPlacement, ...]) -> tuple[ReplicaPlacement, ...] | None:
        # `fit` was found on nodes that nothing has touched since (a victim given back on them triggers a new
        # search): when this victim's nodes are others, the same placement still holds and only quota may differ
        if not {p.node for p in victim.placements} & {p.node for p in fit}:
            if self.book.blocked_by_quota(self.preemptor.queue, placements_usage(fit)) is None:
                return fit
            return None
        return self.fit()

    def nomination(self, fit: tuple[ReplicaPlacement, ...]) -> tuple[ReplicaPlacement, ...]:
        """The policy's placement on the final what-if snapshot (else the fitting one found on the way)."""
        result = self.placer.place_gang(self.snap, self.preemptor, explain=False)
        if result.restore is None:
            return fit
        result.restore()
        if self.book.blocked_by_quota(self.preemptor.queue, placements_usage(result.placements)) is not None:
            return fit
        return result.placements


def victim_reason(preemptor: PendingWorkload, victim: RunningWorkload, fair_share: bool = False) -> str:
    """Why `victim` is stopped, in words recorded on it (`fair_share`: across queues, for fair share;
    otherwise to reclaim a guarantee)."""
    if victim.queue == preemptor.queue:
        return (f"preempted by higher-priority {preemptor.id} (priority {preemptor.priority} > {victim.priority}) "
                f"in queue {preemptor.queue}")
    if fair_share:
        return (f"preempted: queue {victim.queue} was above its fair share and queue {preemptor.queue}, below "
                f"its own, needed the capacity for {preemptor.id}")
    return (f"preempted: queue {victim.queue} was borrowing capacity that queue {preemptor.queue} reclaimed "
            f"for {preemptor.id}")

