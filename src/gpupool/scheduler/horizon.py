"""How long the decisions of a cycle stay the decisions of the same inputs: `unchanged_until`.

`run_cycle` is a function of its inputs and of `now`. A caller that keeps its inputs (the scheduling loop,
when the store reports no change) can skip a cycle whose outcome it already knows, as long as `now` has not
moved past a point where the outcome may differ. The places `now` enters a cycle, and what this module
concludes from each:

1. Preemption: a running workload younger than `min_runtime_s` is no victim, and a pending reason says in
   how many seconds it will be (the text changes every second). While a preemptible, not-yet-stopping
   running workload is that young and some waiting workload could ever take it as a victim (the rules of
   `scheduler.preemption`, read conservatively: in the same queue, a lower priority than the waiting one's;
   across queues, whenever the waiting one's queue has a guarantee to reclaim or fair-share preemption is
   on): no skipping. A young workload no waiting one could take is no candidate at any age.
2. Reservations (backfill): their start times, and whether work may start now without delaying them, are
   computed from `now`; reservations are also an input of the next cycle (held). A cycle that made or held
   any: no skipping.
3. Known ends (start + max_runtime): the reason a reservation moved names work that ran past its
   max_runtime (`end < now`); that only shows with reservations (2), but each end is still counted as a
   point where the outcome may change.
4. Binds and preemptions change the inputs themselves (the caller writes them): no skipping.
5. Holds: a waiting workload that reaches `hold_after_s` of waiting may get a hold (a reservation, 2); the
   time each waiting workload gets there is a point where the outcome may change.

Everything else in a cycle (queue order, quotas, placement, gangs, nominations) reads the inputs only.
A policy that draws random numbers (`PlacementPolicy.draws_randomly`) is the caller's to exclude.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from gpupool.domain.queues import QueueSpec
from gpupool.domain.resources import ResourceVector
from gpupool.scheduler.decisions import Decisions
from gpupool.scheduler.profile import SchedulerProfile
from gpupool.scheduler.types import PendingWorkload, RunningWorkload


def unchanged_until(pending: Sequence[PendingWorkload], running: Sequence[RunningWorkload], decisions: Decisions,
                    profile: SchedulerProfile, now: float, queues: Mapping[str, QueueSpec]) -> float:
    """The earliest time at which `run_cycle` on the same `pending`, `running` and `queues` (held
    reservations taken from `decisions`, as a caller that keeps them passes them) may decide anything
    different from `decisions`, made at `now`: `now` itself when the next cycle may already differ,
    `math.inf` when only a change of the inputs can make it differ. Conservative: it may answer earlier than
    necessary, never later."""
    if not pending:
        return math.inf  # nothing waits: nothing to bind, reserve or preempt for
    if decisions.binds or decisions.preemptions or decisions.reservations:
        return now
    if any(w.reserved is not None for w in pending):
        return now  # a held reservation was given up: the next cycle runs without it
    if profile.preemption and profile.min_runtime_s > 0:
        young = [r for r in running
                 if r.preemptible and not r.terminating and now - r.start_time < profile.min_runtime_s]
        if any(_may_take(w, r, profile, queues) for r in young for w in pending):
            return now
    ends = [end for r in running if (end := r.expected_end()) is not None and end >= now]
    if profile.hold_after_s is not None and profile.backfill:
        ends += [at for w in pending if (at := w.submit_time + profile.hold_after_s) >= now]
    return min(ends, default=math.inf)


def _may_take(preemptor: PendingWorkload, victim: RunningWorkload, profile: SchedulerProfile,
              queues: Mapping[str, QueueSpec]) -> bool:
    """False only when no state of the quotas lets `preemptor` preempt `victim` (see point 1 above)."""
    if victim.queue == preemptor.queue:
        return victim.priority < preemptor.priority
    queue = queues.get(preemptor.queue)
    return profile.fair_share_preemption or queue is None or queue.guaranteed != ResourceVector()
