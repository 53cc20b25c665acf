"""Backfill: reservations for blocked heads, and the rule that later work must not delay them.

The reservation's start is the earliest time at which the head fits if running workloads end at their
max_runtime (start_time + max_runtime_s; workloads already terminating end now; workloads without a
max_runtime are assumed never to end). The reservation
keeps a *future* snapshot: the pool at that time with the head placed. A later workload may start now only
if it will have ended by the reservation's start, or if its placement also fits the future snapshot
(so it takes nothing the head will need). Several heads may hold reservations (up to the profile's
`reservation_depth`); a later reservation is computed on a future that already holds the earlier ones, and a
workload starts now only if every reservation admits it (`admitted_by_all`, all or nothing).

A *hold* is the reservation of a head that has waited long and gets none because the work it waits for
has no max_runtime (so no start time can be promised): the head is placed on the pool as it will be once
some of that work has ended (bounded work first, at its end; then work without a max_runtime, the most
recently started first), and its future is that pool with the head placed. Its start time is when it was
made, so no later workload "ends before it": a later workload starts only off the cards the head needs, and the head
starts once the work on them has ended (`hold`, kept across cycles by `keep_hold`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gpupool.domain.resources import ResourceVector
from gpupool.scheduler.placer import Placer
from gpupool.scheduler.snapshot import ClusterSnapshot, OverCommitError
from gpupool.scheduler.types import HeldReservation, PendingWorkload, ReplicaPlacement, RunningWorkload


class Claim(Protocol):
    """Capacity promised to a head: its placements, taken until `end_time` (None: for good)."""

    @property
    def workload_id(self) -> str: ...

    @property
    def placements(self) -> tuple[ReplicaPlacement, ...]: ...

    @property
    def end_time(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class HeldClaim:
    """A reservation handed back from an earlier cycle, as a Claim (before it is checked again)."""

    workload_id: str
    placements: tuple[ReplicaPlacement, ...]
    end_time: float | None


@dataclass(slots=True)
class Reservation:
    """The head's reserved start and placements, with the future snapshot used to protect them."""

    workload_id: str
    start_time: float
    placements: tuple[ReplicaPlacement, ...]
    future: ClusterSnapshot
    end_time: float | None = None  # start_time + the head's max_runtime (None: unbounded)
    queue: str = ""  # the head's queue
    hold: bool = False  # a hold (module docstring): start_time is when it was made, not a promise

    def forget(self, placements: Sequence[ReplicaPlacement]) -> None:
        """Undo what a successful `admits` took from the future snapshot."""
        for p in reversed(placements):
            self.future.forget(p)

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


def admitted_by_all(reservations: Sequence[Reservation], placements: Sequence[ReplicaPlacement], now: float,
                    max_runtime_s: float | None) -> Reservation | None:
    """None when every reservation admits a workload starting now with `placements` (each then holds its
    capacity in its future), else the first reservation it would delay (and nothing is taken)."""
    taken: list[tuple[Reservation, bool]] = []
    for res in reservations:
        ends_before = max_runtime_s is not None and now + max_runtime_s <= res.start_time
        if not res.admits(placements, now, max_runtime_s):
            for earlier, held in reversed(taken):
                if held:
                    earlier.forget(placements)
            return res
        taken.append((res, not ends_before))
    return None


def reserve(snap: ClusterSnapshot, placer: Placer, head: PendingWorkload, running: Sequence[RunningWorkload],
            now: float, held: Sequence[Claim] = ()) -> Reservation | None:
    """The earliest reservation for `head`, or None when it would not fit even after every bounded
    workload ended. `held`: reservations made before it, whose placements its future keeps taken."""
    # what ends when: running work at its max_runtime, earlier reservations at their own end (they are taken
    # from now on: a conservative view that never lets this head count on capacity they were promised)
    # _end's test written out: this runs over every running workload, and the extra call was half its cost
    ending = sorted([(end, w.id, w.placements) for w in running
                     if (end := now if w.terminating else w.expected_end()) is not None]
                    + [(res.end_time, res.workload_id, res.placements) for res in held if res.end_time is not None],
                    key=lambda item: (item[0], item[1]))
    if not ending:
        return None
    future = snap.clone()
    for res in held:
        future.assume_all(res.placements, force=True)
    need = head.nominal()
    freed = ResourceVector()
    free_now = _free_total(future)
    for end, _, placements in ending:
        for p in placements:
            future.forget(p)
            freed = freed + p.usage()
        if not need.fits_within(free_now + freed):
            continue  # cheap test first: not even the totals suffice yet
        result = placer.place_gang(future, head, explain=False)
        if result.restore is not None:
            start = max(end, now)
            end_time = None if head.max_runtime_s is None else start + head.max_runtime_s
            return Reservation(head.id, start, result.placements, future, end_time, head.queue)
    return None


def hold(snap: ClusterSnapshot, placer: Placer, head: PendingWorkload, running: Sequence[RunningWorkload],
         now: float, held: Sequence[Claim] = ()) -> Reservation | None:
    """A hold for `head` (module docstring), or None when it would not fit even once all running work had
    ended. `running`: all the running work; `held`: reservations made before it, kept taken."""
    bounded = sorted([(end, w.id, w.placements) for w in running
                      if (end := _end(w, now)) is not None], key=lambda item: (item[0], item[1]))
    unbounded = sorted([w for w in running if _end(w, now) is None], key=lambda w: (-w.start_time, w.id))
    future = snap.clone()
    for res in held:
        future.assume_all(res.placements, force=True)
    need = head.nominal()
    free = _free_total(future)
    known = {n.name for n in future.nodes}
    for placements in [p for _, _, p in bounded] + [w.placements for w in unbounded]:
        for p in placements:
            future.forget(p)  # nothing on a node that left the pool (the snapshot lacks it)
            if p.node in known:
                free = free + p.usage()
        if not need.fits_within(free):
            continue
        result = placer.place_gang(future, head, explain=False)
        if result.restore is not None:
            return Reservation(head.id, now, result.placements, future, None, head.queue, hold=True)
    return None


def keep_hold(snap: ClusterSnapshot, head: PendingWorkload, held: HeldReservation,
              running: Sequence[RunningWorkload], earlier: Sequence[Reservation] = ()) -> Reservation | None:
    """The hold an earlier cycle made for `head`, on the same placements and with the same start time (when it
    was made: the same decision every cycle while it lasts): its future is the pool with every
    running workload on the held nodes ended and the head placed there (reservations in `earlier` kept
    taken); None when the head no longer fits there (a node left, an earlier reservation took the cards)."""
    nodes = {p.node for p in held.placements}
    gone = [w for w in running if any(p.node in nodes for p in w.placements)]
    future = _future_with(snap, earlier, gone, held.placements)
    if future is None:
        return None
    return Reservation(head.id, held.start_time, held.placements, future, None, head.queue, hold=True)


def keep(snap: ClusterSnapshot, head: PendingWorkload, held: HeldReservation, running: Sequence[RunningWorkload],
         now: float, earlier: Sequence[Reservation] = ()) -> Reservation | None:
    """The reservation an earlier cycle made for `head`, kept as it was when its placements are still free at
    its start time (running work ended by then at its max_runtime, reservations in `earlier` honoured while
    they overlap the head's run); None when they are not (then a new one must be computed)."""
    start = max(held.start_time, now)
    end_time = None if head.max_runtime_s is None else start + head.max_runtime_s
    overlapping = [res for res in earlier  # those that hold their capacity while the head runs
                   if (end_time is None or res.start_time < end_time)
                   and (res.end_time is None or res.end_time > start)]
    gone = [w for w in running if (end := _end(w, now)) is not None and end <= start]
    future = _future_with(snap, overlapping, gone, held.placements)
    if future is None:
        return None
    return Reservation(head.id, start, held.placements, future, end_time, head.queue)


def _future_with(snap: ClusterSnapshot, taken: Sequence[Reservation], gone: Sequence[RunningWorkload],
                 placements: Sequence[ReplicaPlacement]) -> ClusterSnapshot | None:
    """A copy of `snap` with the reservations `taken` held, the workloads `gone` ended and `placements` taken;
    None when `placements` do not fit it."""
    future = snap.clone()
    for res in taken:
        future.assume_all(res.placements, force=True)
    for workload in gone:
        for p in workload.placements:
            future.forget(p)  # nothing on a node that left the pool (the snapshot lacks it)
    try:
        future.trial(placements)
    except OverCommitError:
        return None
    return future


def _end(workload: RunningWorkload, now: float) -> float | None:
    return now if workload.terminating else workload.expected_end()


def _free_total(snap: ClusterSnapshot) -> ResourceVector:
    """What the schedulable nodes have free, summed; a node over-committed by claims held on it with force
    (a hold's cards, still busy) counts as 0, not below: the sum is a bound the head's need must fit within."""
    s = snap.schedulable
    return ResourceVector(int(snap.free_cpu[s].clip(min=0).sum()), int(snap.free_mem[s].clip(min=0).sum()),
                          int(snap.free_gpu_total[s].clip(min=0).sum()))
