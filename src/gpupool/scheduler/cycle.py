"""run_cycle: one pass of the scheduler over the pending workloads. Pure: decisions, not effects.

The cycle, step by step:
1. Copy the snapshot; build the quota book from the running workloads.
2. Nominated workloads first: a workload that preempted others in an earlier cycle binds to its nominated
   placement when it fits; while its victims are still stopping, that placement is held for it. Then the
   workloads that hold a reservation from an earlier cycle: each starts now if it fits, else its reservation
   is renewed (and protected) before any other work is placed; a start later than promised says why.
3. Take queue heads in fair order: queues whose head stays inside their guarantee first, then by weighted
   dominant share (lowest first); inside a queue by priority (highest first), then submit time, then id.
4. For each head: quota (limit, borrowing), then gang placement (all or nothing, with the profile's
   policy). A head that fits binds, unless it would delay a reservation of a blocked workload; then it is
   placed once more away from the reserved capacity, and binds there if it can.
5. A head that does not fit: "can never run" if it would not fit an empty pool; else preemption (within its
   queue by priority, reclaiming its guarantee from borrowers, or for fair share when switched on) when that
   provably makes it fit and the cycle's preemption budget allows; else a backfill reservation, for up to
   `reservation_depth` blocked heads; a head that has waited past `hold_after_s` and gets no reservation
   (it waits for work without a max_runtime) holds the capacity it needs instead (`backfill.hold`; one hold
   at a time).
6. Everything not bound gets a human reason and its position in its queue.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from gpupool.domain.queues import QueueSpec
from gpupool.domain.resources import ZERO, ResourceVector
from gpupool.scheduler.backfill import Claim, HeldClaim, Reservation, admitted_by_all, hold, keep, keep_hold, reserve
from gpupool.scheduler.decisions import Bind, Decisions, Pending, Preempt, Reserve
from gpupool.scheduler.demand import workload_demand
from gpupool.scheduler.feasibility import NeverFitsChecker
from gpupool.scheduler.gang import largest_first
from gpupool.scheduler.nominations import StoppingCapacity
from gpupool.scheduler.placement.base import PlacementPolicy
from gpupool.scheduler.placement.registry import make_policy
from gpupool.scheduler.placer import GangResult, Placer
from gpupool.scheduler.preemption import deferred_preemption, plan_preemption, victim_reason
from gpupool.scheduler.profile import SchedulerProfile
from gpupool.scheduler.queues import QuotaBook
from gpupool.scheduler.snapshot import ClusterSnapshot
from gpupool.scheduler.types import (
    PendingWorkload,
    ReplicaPlacement,
    RunningWorkload,
    id_order,
    placements_usage,
)

# a blocked head whose reservation cannot be made (it waits on work without a max_runtime) costs one walk over
# the running work; four such tries per reservation slot bound that cost in a cycle with thousands pending
RESERVATION_TRIES_PER_SLOT = 4


def run_cycle(
    snapshot: ClusterSnapshot,
    pending: Iterable[PendingWorkload],
    running: Iterable[RunningWorkload],
    queues: Mapping[str, QueueSpec],
    profile: SchedulerProfile,
    now: float,
    *,
    policy: PlacementPolicy | None = None,
    never_fits: NeverFitsChecker | None = None,
) -> Decisions:
    """Decide what to bind, preempt and reserve, and why everything else waits.

    `snapshot` must hold the placements of `running` (it is copied, never changed; what a placement names that
    the snapshot lacks, such as a node that left the pool, holds nothing: `ClusterSnapshot.assume`). Pass the same
    `policy` instance across cycles to keep its caches and learned target; pass a `never_fits` checker
    to reuse its cache while the nodes stay the same. Same inputs give the same decisions.
    """
    cycle = _Cycle(snapshot.clone(), list(running), queues, profile, now, policy, never_fits)
    return cycle.run(list(pending))


def queue_order(workloads: Iterable[PendingWorkload]) -> dict[str, list[PendingWorkload]]:
    """Pending workloads per queue, each list in queue order (priority desc, submit time, id: see `id_order`)."""
    by_queue: dict[str, list[PendingWorkload]] = {}
    for w in workloads:
        by_queue.setdefault(w.queue, []).append(w)
    for items in by_queue.values():
        items.sort(key=lambda w: (-w.priority, w.submit_time, *id_order(w.id)))
    return dict(sorted(by_queue.items()))


class _Cycle:
    def __init__(self, snap: ClusterSnapshot, running: list[RunningWorkload], queues: Mapping[str, QueueSpec],
                 profile: SchedulerProfile, now: float, policy: PlacementPolicy | None,
                 never_fits: NeverFitsChecker | None) -> None:
        self.snap, self.profile, self.now = snap, profile, now
        self.running = running
        self.stopping = StoppingCapacity(w for w in running if w.terminating)
        self.book = QuotaBook(queues, running, snap.total_capacity())
        self.placer = Placer(policy or make_policy(profile.policy), profile.gang_topology,
                             profile.cpu_avoids_gpu_nodes)
        self._never_fits = never_fits
        self.decisions = Decisions()
        self.reservations: list[Reservation] = []
        self._queue_ending: dict[str, ResourceVector] = {}  # per reservation: its queue's usage ended by then
        self.reservation_tries = 0
        self.unreservable: set[object] = set()
        self.preempted = 0
        self._candidates: dict[object, list[RunningWorkload]] = {}  # ordered preemption candidates
        self.started: list[RunningWorkload] = []  # bound this cycle (never preempted in it)
        self._ending: list[RunningWorkload] | None = None  # running + started that end at a known time
        self.reasons: dict[str, str] = {}
        self.nominations: dict[str, tuple[ReplicaPlacement, ...]] = {}
        self.bound: set[str] = set()
        self.failed_shapes: dict[object, str] = {}
        self._demands: dict[str, ResourceVector] = {}
        self.unpreemptable_shapes: set[object] = set()
        self.deferred: dict[object, str] = {}  # shape -> "will preempt ... when its minimum run time ends"

    @property
    def never_fits(self) -> NeverFitsChecker:
        if self._never_fits is None:
            self._never_fits = NeverFitsChecker(self.snap.nodes)
        return self._never_fits

    def run(self, pending: list[PendingWorkload]) -> Decisions:
        by_queue = queue_order(pending)
        handled = self._nominated_first(w for items in by_queue.values() for w in items if w.nominated)
        handled |= self._reserved_first(w for items in by_queue.values() for w in items
                                        if w.reserved and w.id not in handled)
        self._admit_in_order(by_queue, handled)
        self._record_pending(by_queue)
        return self.decisions

    # ------------------------------------------------------------------------------- step 2: nominations
    def _nominated_first(self, nominated: Iterable[PendingWorkload]) -> set[str]:
        handled: set[str] = set()
        for w in sorted(nominated, key=lambda w: (-w.priority, w.submit_time, *id_order(w.id))):
            placements = w.nominated or ()
            fits = self._fits_jointly(placements)
            quota = self.book.blocked_by_quota(w.queue, placements_usage(placements))
            if fits and quota is None:
                self.snap.assume_all(placements)
                self._bind(w, placements)
                handled.add(w.id)
            elif self._victims_still_stopping(placements, quota is not None):
                self.snap.assume_all(self.stopping.claim(placements), force=True)  # hold what its victims free
                self.book.add(w.queue, placements_usage(placements))
                self.nominations[w.id] = placements
                self.reasons[w.id] = "waiting for the workloads it preempted to stop"
                handled.add(w.id)
        return handled

    def _fits_jointly(self, placements: Sequence[ReplicaPlacement]) -> bool:
        taken: list[ReplicaPlacement] = []
        ok = True
        for p in placements:
            if not self.snap.fits(p):
                ok = False
                break
            self.snap.assume(p)
            taken.append(p)
        for p in reversed(taken):
            self.snap.forget(p)
        return ok

    def _victims_still_stopping(self, placements: Sequence[ReplicaPlacement], quota_blocked: bool) -> bool:
        """Work is still stopping on the nominated nodes (victims that free capacity) or, when quota holds the
        nominee back, anywhere (victims that free quota: its own queue's, or room owed to other queues)."""
        nodes = {p.node for p in placements}
        return any(w.terminating and (quota_blocked or any(p.node in nodes for p in w.placements))
                   for w in self.running)

    def _reserved_first(self, reserved: Iterable[PendingWorkload]) -> set[str]:
        """Workloads holding a reservation from an earlier cycle, before any other work, earliest promise
        first: start now if they can without delaying another reservation, else keep the reservation
        (moved earlier when capacity frees sooner; protected and shown) while the reasons stay the same. A
        reservation that is due while its workload's quota holds it back is released: a reservation promises
        capacity, not quota (the room a queue may borrow shrinks when a queue that does not lend needs its
        guarantee again), and holding idle capacity for work that may not start kept it from everyone else."""
        handled: set[str] = set()
        order = sorted(reserved, key=_promise_order)
        for k, w in enumerate(order):
            if self.never_fits.reason(w) is not None:
                continue
            later = order[k + 1:]
            started, failure = self._start_reserved(w, later)
            if started:
                handled.add(w.id)
                continue
            if self._due_and_held_back_by_quota(w):
                continue  # released: the ordered pass gives the quota's reason
            if w.reserved is not None and w.reserved.hold and self._preempt_for(w):
                handled.add(w.id)  # a hold has no end: preemption that has become possible goes first
                continue
            res = self._keep_reservation(w, later)  # never a new one that would take what `later` were promised
            if res is None:
                continue  # its reason has changed: the ordered pass says which
            self.reasons[w.id] = self._reservation_reason(w, res, failure)
            handled.add(w.id)
        return handled

    def _due_and_held_back_by_quota(self, w: PendingWorkload) -> bool:
        """True when `w`'s reservation is due (its start time has come) and its queue's quota refuses what it
        asks for now."""
        return (w.reserved is not None and w.reserved.start_time <= self.now
                and self.book.blocked_by_quota(w.queue, self._demand(w)) is not None)

    def _start_reserved(self, w: PendingWorkload, later: Sequence[PendingWorkload]) -> tuple[bool, str]:
        """Bind a reserved head now, on its reserved placement when that is free, else where the policy puts
        it; never on capacity promised to another held reservation. (started?, why not)."""
        held = w.reserved.placements if w.reserved is not None else ()
        # on its own placements it takes only what was promised to it: later promises were made behind it on
        # those cards (when it starts late, they slip by as much and say why), so only their other cards count
        if held and self._fits_jointly(held) and self._admits_reserved(w, held, later, own=True):
            self.snap.assume_all(held)
            self._bind(w, held)
            return True, ""
        result = self._place(w)
        if result.restore is None:
            return False, result.reason
        if self._admits_reserved(w, result.placements, later):
            self._bind(w, result.placements)
            return True, ""
        result.restore()
        return False, "the capacity it could take now is promised to other reservations or its queue is full"

    def _admits_reserved(self, w: PendingWorkload, placements: tuple[ReplicaPlacement, ...],
                         later: Sequence[PendingWorkload], own: bool = False) -> bool:
        """May `w` start now on `placements`: off the cards of the held reservations in `later` (unless it ends
        before they start; with `own`, `placements` are its own reserved ones, promised before theirs), within
        its quota, and delaying no reservation made in this cycle."""
        end = None if w.max_runtime_s is None else self.now + w.max_runtime_s
        mine = set() if own else _cards(placements)
        for other in later:  # held reservations not yet checked: keep off their cards unless done by then
            if other.reserved is None or (end is not None and end <= other.reserved.start_time):
                continue
            if mine & _cards(other.reserved.placements):
                return False
        usage = placements_usage(placements)
        return (self.book.blocked_by_quota(w.queue, usage) is None
                and self._admission_blocked(w, placements, usage) is None)

    def _keep_reservation(self, w: PendingWorkload, later: Sequence[PendingWorkload]) -> Reservation | None:
        """The held reservation of `w`, moved earlier when capacity frees sooner (without touching what is
        promised to any other held head), else kept as it was when it still holds."""
        if (w.reserved is None or not self.profile.backfill
                or len(self.reservations) >= self.profile.reservation_depth):
            return None
        running = self.running + self.started
        others: list[Claim] = list(self.reservations)
        others += [HeldClaim(o.id, o.reserved.placements, _held_end(o)) for o in later if o.reserved is not None]
        res = reserve(self.snap, self.placer, w, running, self.now, others)
        if w.reserved.hold:  # a hold gives way to a reservation as soon as a start time can be promised
            if res is None or self._refused_at(w, res.start_time) is not None:
                res = keep_hold(self.snap, w, w.reserved, running, self.reservations)
        else:
            if res is None or res.start_time >= w.reserved.start_time:  # the held one when it still holds, else
                res = keep(self.snap, w, w.reserved, running, self.now, self.reservations) or res  # the new one
            if res is not None and self._refused_at(w, res.start_time) is not None:
                return None  # released: its quota would refuse it then (the ordered pass says why)
        if res is not None:
            self.reservations.append(res)
            self.decisions.reservations.append(Reserve(w.id, res.start_time, res.placements, hold=res.hold))
        return res

    def _reservation_reason(self, w: PendingWorkload, res: Reservation, failure: str) -> str:
        nodes = ", ".join(sorted({p.node for p in res.placements}))
        if res.hold:
            return f"{failure}; {_hold_words(nodes, self.profile.hold_after_s)}"
        reason = f"{failure}; reserved to start by t={res.start_time:g} on {nodes}"
        # a hold promised no time: the reservation it gives way to is the first promise
        promised = w.reserved.start_time if w.reserved is not None and not w.reserved.hold else res.start_time
        if res.start_time <= promised + 1e-6:
            return reason
        overran = sorted(r.id for r in self.running
                         if (end := r.expected_end()) is not None and end < self.now and not r.terminating)
        why = (f"{', '.join(overran[:3])} ran past its max_runtime" if overran
               else "the capacity it was promised went to higher-priority work or left the pool")
        return f"{reason} (later than the t={promised:g} promised: {why})"

    # ------------------------------------------------------------------------- steps 3-5: fair ordering
    def _admit_in_order(self, by_queue: dict[str, list[PendingWorkload]], handled: set[str]) -> None:
        lists = {q: [w for w in items if w.id not in handled] for q, items in by_queue.items()}
        cursor = dict.fromkeys(lists, 0)
        heap = [(self._queue_key(q, items[0]), q) for q, items in lists.items() if items]
        heapq.heapify(heap)
        while heap:
            _, q = heapq.heappop(heap)
            items = lists[q]
            w = items[cursor[q]]
            cursor[q] += 1
            if not self._try(w) and self.book.spec(q).strict_fifo:
                for later in items[cursor[q]:]:
                    self.reasons[later.id] = f"behind {w.id}, the head of strict-FIFO queue {q}"
                continue
            if cursor[q] < len(items):
                heapq.heappush(heap, (self._queue_key(q, items[cursor[q]]), q))

    def _demand(self, w: PendingWorkload) -> ResourceVector:
        demand = self._demands.get(w.id)
        if demand is None:
            demand = self._demands[w.id] = workload_demand(w, self.snap)
        return demand

    def _queue_key(self, queue: str, head: PendingWorkload) -> tuple[int, float, str]:
        borrowing = 0 if self.book.within_guarantee(queue, self._demand(head)) else 1
        return (borrowing, self.book.share(queue), queue)

    def _try(self, w: PendingWorkload) -> bool:
        shape = w.shape_key()
        never = self.never_fits.reason(w, shape)
        if never is not None:
            self.reasons[w.id] = never
            return False
        quota = self.book.blocked_by_quota(w.queue, self._demand(w))
        if quota is not None:
            if not self._preempt_for(w):
                self.reasons[w.id] = self._deferred_or(w, quota)
            return False
        failure = self.failed_shapes.get(shape)
        if failure is None:
            result = self._place(w)
            if result.restore is not None:
                usage = placements_usage(result.placements)
                blocked = self._admission_blocked(w, result.placements, usage)
                if blocked is None:
                    self._bind(w, result.placements, usage)
                    return True
                result.restore()
                if self.reservations and self._bind_around_reservation(w):
                    return True
                self.reasons[w.id] = blocked
                return False
            failure = self.failed_shapes[shape] = result.reason
        self._handle_no_fit(w, failure)
        return False

    def _admission_blocked(self, w: PendingWorkload, placements: tuple[ReplicaPlacement, ...],
                           usage: ResourceVector) -> str | None:
        """Why `w` may not start with `placements` (whose summed usage is `usage`) now, or None."""
        if usage != self._demand(w):  # shares sized by memory: check the quota again with the exact milli
            quota = self.book.blocked_by_quota(w.queue, usage)
            if quota is not None:
                return quota
        res = self._limit_kept_for(w, usage) or admitted_by_all(self.reservations, placements, self.now,
                                                                 w.max_runtime_s)
        if res is not None and res.hold:
            return f"starting now would take capacity held for {res.workload_id}, which has waited long"
        if res is not None:
            return (f"starting now would delay {res.workload_id}, which holds a reservation to start by "
                    f"t={res.start_time:g}")
        return None

    def _limit_kept_for(self, w: PendingWorkload, usage: ResourceVector) -> Reservation | None:
        """The first reservation of `w`'s own queue that `w` would delay by taking the room under the queue's
        limit that the reserved head needs at its start (work of the queue ending by then gives room back)."""
        limit = self.book.spec(w.queue).limit
        if limit is None:
            return None
        for res in self.reservations:
            if res.queue != w.queue or (w.max_runtime_s is not None and self.now + w.max_runtime_s <= res.start_time):
                continue
            ending = self._queue_ending.get(res.workload_id)
            if ending is None:  # work started in this cycle is left out: it is counted as still running then
                ending = ResourceVector()
                for r in self.running:
                    end = self.now if r.terminating else r.expected_end()
                    if r.queue == w.queue and end is not None and end <= res.start_time:
                        ending = ending + r.usage
                self._queue_ending[res.workload_id] = ending
            at_start = self.book.used(w.queue) - ending + usage + placements_usage(res.placements)
            if at_start.exceeding(limit):
                return res
        return None

    def _place(self, w: PendingWorkload) -> GangResult:
        """The policy's gang placement; a gang of several roles that does not fit in the order its groups
        are listed is tried once more with the largest replicas first (greedy placement depends on order)."""
        result = self.placer.place_gang(self.snap, w)
        if result.restore is None and len(w.groups) > 1:
            again = self.placer.place_gang(self.snap, largest_first(w), explain=False)
            if again.restore is not None:
                return again
        return result

    def _bind_around_reservation(self, w: PendingWorkload) -> bool:
        """The policy's placement would delay the reservation: place once more with the reserved capacity held,
        so that `w` starts elsewhere when it can (capacity free now minus the head's is free then too)."""
        held = [p for res in self.reservations for p in res.placements]
        self.snap.assume_all(held, force=True)
        result = self.placer.place_gang(self.snap, w)
        if result.restore is not None:
            result.restore()
        for p in reversed(held):
            self.snap.forget(p)
        if result.restore is None:
            return False
        usage = placements_usage(result.placements)
        if self._admission_blocked(w, result.placements, usage) is not None:
            return False
        self.snap.assume_all(result.placements)
        self._bind(w, result.placements, usage)
        return True

    def _handle_no_fit(self, w: PendingWorkload, failure: str) -> None:
        if self._preempt_for(w):
            return
        failure = self._deferred_or(w, failure)
        res = self._try_reserve(w)
        if isinstance(res, str):  # no reservation: its quota would refuse it when it came due
            self.reasons[w.id] = f"{failure}; {res}"
            return
        if res is not None:
            nodes = ", ".join(sorted({p.node for p in res.placements}))
            promise = (_hold_words(nodes, self.profile.hold_after_s) if res.hold
                       else f"reserved to start by t={res.start_time:g} on {nodes}")
            self.reasons[w.id] = f"{failure}; {promise}"
            return
        self.reasons[w.id] = failure

    def _try_reserve(self, w: PendingWorkload) -> Reservation | str | None:
        """A new reservation for the blocked head `w`; the reason it gets none when its quota would refuse it at
        the reservation's start (`_refused_at`); else None."""
        depth = self.profile.reservation_depth
        if (not self.profile.backfill or len(self.reservations) >= depth
                or self.reservation_tries >= RESERVATION_TRIES_PER_SLOT * depth):
            return None
        key = (w.shape_key(), w.max_runtime_s)
        may_hold = (self.profile.hold_after_s is not None and self.now - w.submit_time >= self.profile.hold_after_s
                    and not any(r.hold for r in self.reservations))  # one hold at a time
        if key in self.unreservable and not may_hold:
            return None
        self.reservation_tries += 1
        res = None if key in self.unreservable else reserve(self.snap, self.placer, w, self._known_ends(), self.now,
                                                            self.reservations)
        if res is None:
            self.unreservable.add(key)
            if not may_hold:
                return None
            res = hold(self.snap, self.placer, w, self.running + self.started, self.now, self.reservations)
            if res is None:
                return None
        refused = self._refused_at(w, res.start_time)
        if refused is not None:
            return f"no {'hold' if res.hold else 'reservation'}: {refused}"
        self.reservations.append(res)
        self.decisions.reservations.append(Reserve(w.id, res.start_time, res.placements, hold=res.hold))
        return res

    def _refused_at(self, w: PendingWorkload, start: float) -> str | None:
        """Why `w`'s queue would refuse it at `start`, when the capacity reserved for it is free, by the work
        running then (what ends by `start` left out): over its limit, or borrowing more than the other queues
        lend (the rest owed to queues that do not lend). None when it would admit it. A reservation promises
        capacity, and holds it for its workload until then: one that would come due refused is not made."""
        demand = self._demand(w)
        if self.book.spec(w.queue).limit is None and not (
                self.book.owes_guarantees and self.book.borrows(w.queue, demand)):
            return None  # nothing to refuse it then: usage only falls by then, and no queue keeps room owed
        staying = [r for r in self.running + self.started
                   if not r.terminating and ((end := r.expected_end()) is None or end > start)]
        then = QuotaBook(self.book.queues, staying, self.book.total)
        limit = then.spec(w.queue).limit
        if limit is not None and (then.used(w.queue) + demand).exceeding(limit):
            return f"at t={start:g} queue {w.queue} would still be at its limit"
        owed = then.owed_once_free(w.queue, demand)
        return None if owed is None else f"at t={start:g} {owed}"

    def _known_ends(self) -> list[RunningWorkload]:
        """The running and started work that ends at a known time (terminating, or with a max_runtime), in the
        order of `running + started`: all that `reserve` looks at, without walking thousands of unbounded
        workloads for every blocked head."""
        if self._ending is None:
            self._ending = [r for r in self.running + self.started
                            if r.terminating or r.max_runtime_s is not None]
        return self._ending

    def _preempt_for(self, w: PendingWorkload) -> bool:
        shape = self._preemption_shape(w)
        budget = self.profile.max_preemptions_per_cycle - self.preempted
        if not self.profile.preemption or budget <= 0 or shape in self.unpreemptable_shapes:
            return False
        demand = self._demand(w)
        plan = plan_preemption(self.snap, self.placer, w, self.running, self.book, self.now,
                               self.profile.min_runtime_s, demand=demand,
                               fair_share=self.profile.fair_share_preemption, max_victims=budget,
                               cache=self._candidates)
        if plan is None:
            self.unpreemptable_shapes.add(shape)
            deferred = deferred_preemption(self.snap, self.placer, w, self.running, self.book, self.now,
                                           self.profile.min_runtime_s, demand=demand,
                                           fair_share=self.profile.fair_share_preemption)
            if deferred is not None:
                self.deferred[shape] = deferred
            return False
        victim_ids = {v.id for v in plan.victims}
        self.preempted += len(plan.victims)
        for victim in plan.victims:
            # the victim's usage stays in the quota book until it has stopped (it still holds the capacity)
            fair_share = victim.id in plan.fair_share
            self.decisions.preemptions.append(Preempt(victim.id, w.id, victim_reason(w, victim, fair_share),
                                                      fair_share, victim.queue != w.queue))
            self.book.mark_stopping(victim.queue, victim.usage)
            self.stopping.add(victim)
        self.running = [replace(r, terminating=True) if r.id in victim_ids else r for r in self.running]
        self._ending = None
        self.snap.assume_all(self.stopping.claim(plan.nominated), force=True)  # hold the part victims do not
        self.book.add(w.queue, placements_usage(plan.nominated))
        self.nominations[w.id] = plan.nominated
        nodes = ", ".join(sorted({p.node for p in plan.nominated}))
        self.reasons[w.id] = (f"preempting {len(plan.victims)} workload(s) ({', '.join(sorted(victim_ids))}); "
                              f"will start on {nodes} when they stop")
        return True

    def _deferred_or(self, w: PendingWorkload, reason: str) -> str:
        """The words of a preemption that waits for its victims' minimum run time, else `reason`."""
        return self.deferred.get(self._preemption_shape(w), reason)

    @staticmethod
    def _preemption_shape(w: PendingWorkload) -> object:
        """What decides whether `w` may preempt its way in: workloads alike in it share one answer per cycle."""
        return (w.queue, w.priority, w.shape_key(), w.fair_share_preempted_by)

    def _bind(self, w: PendingWorkload, placements: tuple[ReplicaPlacement, ...],
              usage: ResourceVector | None = None) -> None:
        """Record `w` as started on `placements` (`usage`: their summed usage when the caller has it)."""
        started = RunningWorkload(w.id, w.queue, placements, w.priority, self.now, w.preemptible, w.max_runtime_s,
                                  usage=usage if usage is not None else ZERO)
        self.decisions.binds.append(Bind(w.id, placements))
        self.book.add(w.queue, started.usage)  # the placements' usage, summed once when it was built
        self.bound.add(w.id)
        self.started.append(started)
        if self._ending is not None and w.max_runtime_s is not None:
            self._ending.append(started)

    # -------------------------------------------------------------------------------- step 6: reasons
    def _record_pending(self, by_queue: dict[str, list[PendingWorkload]]) -> None:
        for items in by_queue.values():
            position = 0
            for w in items:
                if w.id in self.bound:
                    continue
                position += 1
                reason = self.reasons.get(w.id, "not considered this cycle")
                self.decisions.pending.append(Pending(w.id, reason, position, self.nominations.get(w.id)))


def _hold_words(nodes: str, hold_after_s: float | None) -> str:
    """How a hold reads in a pending reason (the same words every cycle: a reason is written when it changes)."""
    return (f"holding its capacity on {nodes}: it has waited over {hold_after_s or 0:g} s for work without a "
            "max_runtime, so no start can be promised; no later work starts there until it does")


def _promise_order(w: PendingWorkload) -> tuple[float, int, float, int, str]:
    """Held reservations are checked earliest promise first (then priority, submit time, id)."""
    start = w.reserved.start_time if w.reserved is not None else float("inf")
    return (start, -w.priority, w.submit_time, *id_order(w.id))


def _held_end(w: PendingWorkload) -> float | None:
    """When the held reservation of `w` ends (None: unknown, for good: no max_runtime, or a hold)."""
    if w.reserved is None or w.max_runtime_s is None or w.reserved.hold:
        return None
    return w.reserved.start_time + w.max_runtime_s


def _cards(placements: Sequence[ReplicaPlacement]) -> set[tuple[str, int]]:
    """(node, card) of every GPU the placements use; (node, -1) for a replica without GPUs."""
    return {(p.node, g.index) for p in placements for g in p.gpus} | {(p.node, -1) for p in placements if not p.gpus}
