"""CycleDriver: runs `run_cycle` over many cycles on a virtual clock, and lets its effects take time.

What the server and the simulator do between cycles, reduced to what the scheduler's guarantees depend on:
- a bound workload runs for its duration (at most its max_runtime) and then finishes;
- a preempted workload keeps its capacity for `stop_cycles` more cycles, then stops and is requeued (same
  id, same submit time) as a pending workload;
- a Pending decision's nominated placement and a Reserve decision's reservation are handed back on the
  workload in the next cycle, as the server does;
- arrivals are submitted at their time;
- nodes leave the pool, come back and are cordoned at their time (`NodeEvent`): the work on a node that left
  is still reported running for `lost_after` cycles (on every node it held, that one included), then it is
  lost and requeued, as the server declares replicas lost.

After every cycle the driver checks what must hold at all times (no node or card over-committed, no queue
over its limit counting workloads that are still stopping, gangs all or nothing, nothing bound on a node that
is gone or cordoned) and records starts,
preemptions and promised start times for the tests to check over the whole run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from gpupool.domain.nodes import Node
from gpupool.domain.queues import QueueSpec
from gpupool.domain.resources import ResourceVector
from gpupool.scheduler.cycle import run_cycle
from gpupool.scheduler.decisions import Decisions
from gpupool.scheduler.placement.registry import make_policy
from gpupool.scheduler.profile import SchedulerProfile
from gpupool.scheduler.snapshot import ClusterSnapshot, OverCommitError
from gpupool.scheduler.types import HeldReservation, PendingWorkload, RunningWorkload, placements_usage


@dataclass(frozen=True)
class Arrival:
    """`workload` is submitted at `time` and runs `duration` seconds once started (capped by max_runtime)."""

    time: float
    workload: PendingWorkload
    duration: float


@dataclass(frozen=True)
class NodeEvent:
    """At `time`: node `name` leaves the pool ("leave"; its work is reported running `lost_after` more cycles),
    joins it as `node` ("join"), or is cordoned / uncordoned ("cordon", "uncordon")."""

    time: float
    kind: str
    name: str
    node: Node | None = None
    lost_after: int = 0


@dataclass
class Record:
    """What happened over a run."""

    starts: dict[str, list[float]] = field(default_factory=dict)
    finished: dict[str, float] = field(default_factory=dict)
    preemptions: Counter[str] = field(default_factory=Counter)
    between: Counter[frozenset[str]] = field(default_factory=Counter)  # preemptions between two workloads
    preempted_by: dict[str, set[str]] = field(default_factory=dict)
    waiting_preemptors: set[str] = field(default_factory=set)  # preempted for, not started since
    first_promise: dict[str, float] = field(default_factory=dict)
    due_reasons: dict[str, str] = field(default_factory=dict)  # the reason in the first cycle at or past the promise
    reasons: dict[str, str] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    cycles: int = 0
    peak_queue_usage: dict[str, ResourceVector] = field(default_factory=dict)
    lost: Counter[str] = field(default_factory=Counter)  # workloads lost with a node that left

    def start(self, workload_id: str) -> float | None:
        """When the workload first started (None: never)."""
        times = self.starts.get(workload_id)
        return times[0] if times else None


class CycleDriver:
    """A virtual cluster driven by `run_cycle` every `cycle_s` seconds (see the module docstring)."""

    def __init__(self, nodes: Sequence[Node], queues: Iterable[QueueSpec] = (),
                 profile: SchedulerProfile | None = None, *, cycle_s: float = 10.0, stop_cycles: int = 2,
                 start: float = 0.0, carry_reservations: bool = True) -> None:
        self.nodes = list(nodes)
        self.queues: Mapping[str, QueueSpec] = {q.name: q for q in queues}
        self.profile = profile or SchedulerProfile(policy="bestfit")
        self.policy = make_policy(self.profile.policy)
        self.cycle_s, self.stop_cycles, self.now = cycle_s, stop_cycles, start
        self.carry_reservations = carry_reservations
        self.pending: dict[str, PendingWorkload] = {}
        self.templates: dict[str, PendingWorkload] = {}
        self.durations: dict[str, float] = {}
        self.running: dict[str, RunningWorkload] = {}
        self.ends: dict[str, float] = {}
        self.stopping: dict[str, int] = {}
        self.arrivals: list[Arrival] = []
        self.node_events: list[NodeEvent] = []
        self.losing: dict[str, int] = {}  # workload on a node that left -> cycles it is still reported running
        self.record = Record()
        self.last: Decisions = Decisions()

    # ----------------------------------------------------------------------------------------- input
    def submit(self, workload: PendingWorkload, duration: float, at: float | None = None) -> None:
        """Submit now (or at time `at`); it runs `duration` seconds once started."""
        self.arrivals.append(Arrival(self.now if at is None else at, workload, duration))
        self.arrivals.sort(key=lambda a: (a.time, a.workload.id))

    def add_running(self, workload: RunningWorkload, ends_at: float | None = None,
                    requeue_as: PendingWorkload | None = None) -> None:
        """Start with `workload` already running; it finishes at `ends_at` (None: at its max_runtime, or
        never). When preempted it is requeued as `requeue_as` (None: it just goes away)."""
        self.running[workload.id] = workload
        end = ends_at if ends_at is not None else workload.expected_end()
        if end is not None:
            self.ends[workload.id] = end
            self.durations[workload.id] = end - workload.start_time
        if requeue_as is not None:
            self.templates[workload.id] = requeue_as

    def node_event(self, event: NodeEvent) -> None:
        """Apply `event` at its time."""
        self.node_events.append(event)
        self.node_events.sort(key=lambda e: e.time)

    # ------------------------------------------------------------------------------------------ cycles
    def step(self) -> Decisions:
        """One cycle at `now`: finish and stop what is due, change the nodes, lose what a node took with it,
        submit arrivals, decide, apply, check, advance."""
        self._finish_and_stop()
        while self.node_events and self.node_events[0].time <= self.now:
            self._change_nodes(self.node_events.pop(0))
        self._lose_work()
        while self.arrivals and self.arrivals[0].time <= self.now:
            a = self.arrivals.pop(0)
            self.pending[a.workload.id] = a.workload
            self.templates[a.workload.id] = a.workload
            self.durations[a.workload.id] = a.duration
        snap = self._snapshot()
        decisions = run_cycle(snap, list(self.pending.values()), list(self.running.values()), self.queues,
                              self.profile, self.now, policy=self.policy)
        self._apply(decisions)
        self._check()
        self.last = decisions
        self.record.cycles += 1
        self.now += self.cycle_s
        return decisions

    def run(self, cycles: int) -> Record:
        """`cycles` cycles; returns the record."""
        for _ in range(cycles):
            self.step()
        return self.record

    def run_until_idle(self, max_cycles: int = 2000) -> Record:
        """Cycles until nothing is pending, running or still to arrive (or `max_cycles`)."""
        for _ in range(max_cycles):
            if not (self.pending or self.running or self.arrivals):
                break
            self.step()
        return self.record

    def _finish_and_stop(self) -> None:
        for wid in sorted(self.stopping):
            self.stopping[wid] -= 1
            if self.stopping[wid] <= 0:
                del self.stopping[wid]
                del self.running[wid]
                self.ends.pop(wid, None)
                self.losing.pop(wid, None)
                if wid in self.templates:
                    self.pending[wid] = self.templates[wid]  # requeued: same id and submit time
        for wid, end in sorted(self.ends.items()):
            if end <= self.now and wid in self.running and wid not in self.stopping:
                del self.running[wid]
                del self.ends[wid]
                self.losing.pop(wid, None)
                self.record.finished[wid] = self.now

    def _change_nodes(self, event: NodeEvent) -> None:
        others = [n for n in self.nodes if n.name != event.name]
        here = next((n for n in self.nodes if n.name == event.name), None)
        for w in self.pending.values():  # a preemptor nominated on the node may have to preempt elsewhere
            if event.kind != "uncordon" and any(p.node == event.name for p in w.nominated or ()):
                self.record.waiting_preemptors.discard(w.id)
        if event.kind == "leave":
            self.nodes = others
            for w in self.running.values():
                if any(p.node == event.name for p in w.placements):
                    self.losing.setdefault(w.id, event.lost_after)
        elif event.kind == "join" and event.node is not None:  # a node back, or one with fewer cards now
            self.nodes = sorted([*others, event.node], key=lambda n: n.name)
            cards = {g.index for g in event.node.gpus}
            for w in self.running.values():
                if any(p.node == event.name and any(g.index not in cards for g in p.gpus) for p in w.placements):
                    self.losing.setdefault(w.id, event.lost_after)
        elif event.kind in ("cordon", "uncordon") and here is not None:
            self.nodes = sorted([*others, replace(here, schedulable=event.kind == "uncordon")],
                                key=lambda n: n.name)

    def _lose_work(self) -> None:
        for wid in sorted(self.losing):
            if self.losing[wid] > 0:
                self.losing[wid] -= 1
                continue
            del self.losing[wid]
            del self.running[wid]  # (one that ended or stopped meanwhile left `losing` then)
            self.ends.pop(wid, None)
            self.stopping.pop(wid, None)
            self.record.lost[wid] += 1
            if wid in self.templates:
                self.pending[wid] = self.templates[wid]

    def _snapshot(self) -> ClusterSnapshot:
        """The pool as the scheduler sees it: its nodes, cordons included, with all running work loaded as it is
        (forced, as the server loads it)."""
        snap = ClusterSnapshot(self.nodes)
        for w in sorted(self.running.values(), key=lambda w: w.id):
            snap.assume_all(w.placements, force=True)
        return snap

    def _check_capacity(self) -> None:
        """Record every over-commit: the running work must fit the nodes (cordoned ones too: a cordon changes no
        capacity), except work on capacity that is gone, loaded as it is until it is lost."""
        snap = ClusterSnapshot([replace(n, schedulable=True) for n in self.nodes])
        here = {n.name for n in self.nodes}
        for w in sorted(self.running.values(), key=lambda w: (w.id not in self.losing, w.id)):
            if w.id in self.losing:
                snap.assume_all(w.placements, force=True)
                continue
            try:
                snap.assume_all([p for p in w.placements if p.node in here])
            except OverCommitError as exc:
                self.record.violations.append(f"t={self.now:g}: {w.id} over-commits: {exc}")
                snap.assume_all(w.placements, force=True)

    def _apply(self, decisions: Decisions) -> None:
        for b in decisions.binds:
            w = self.pending.pop(b.workload_id)
            usable = {n.name for n in self.nodes if n.schedulable}
            if any(p.node not in usable for p in b.placements):
                self.record.violations.append(f"t={self.now:g}: {w.id} bound on a node that is gone or cordoned")
            if len(b.placements) < w.gang_size:
                self.record.violations.append(f"t={self.now:g}: {w.id} bound {len(b.placements)} of a gang of "
                                              f"{w.gang_size}")
            self.running[w.id] = RunningWorkload(w.id, w.queue, b.placements, w.priority, self.now, w.preemptible,
                                                 w.max_runtime_s)
            duration = self.durations.get(w.id, float("inf"))
            if w.max_runtime_s is not None:
                duration = min(duration, w.max_runtime_s)
            self.ends[w.id] = self.now + duration
            self.record.starts.setdefault(w.id, []).append(self.now)
            self.record.waiting_preemptors.discard(w.id)
        for preemptor in sorted({p.preemptor_id for p in decisions.preemptions}):
            if preemptor in self.record.waiting_preemptors:
                self.record.violations.append(f"t={self.now:g}: {preemptor} preempts again before it has started")
            self.record.waiting_preemptors.add(preemptor)
        for p in decisions.preemptions:
            pair = frozenset((p.victim_id, p.preemptor_id))
            self.record.between[pair] += 1
            if p.victim_id in self.record.preempted_by.get(p.preemptor_id, set()) and self.record.between[pair] > 2:
                self.record.violations.append(f"t={self.now:g}: {p.victim_id} and {p.preemptor_id} keep preempting "
                                              "each other")
            self.record.preempted_by.setdefault(p.victim_id, set()).add(p.preemptor_id)
            if p.victim_id in self.stopping or p.victim_id not in self.running:
                self.record.violations.append(f"t={self.now:g}: {p.victim_id} preempted while not running")
                continue
            self.running[p.victim_id] = replace(self.running[p.victim_id], terminating=True)
            # the requeued victim remembers its preemptor (getattr: the sweeps also drive older scheduler code)
            if getattr(p, "across_queues", getattr(p, "fair_share", False)) and p.victim_id in self.templates:
                template = self.templates[p.victim_id]
                self.templates[p.victim_id] = replace(
                    template, fair_share_preempted_by=template.fair_share_preempted_by | {p.preemptor_id})
            self.stopping[p.victim_id] = self.stop_cycles
            self.record.preemptions[p.victim_id] += 1
        self._check_reclaim(decisions)
        reserved = {r.workload_id: r for r in decisions.reservations}
        for r in decisions.reservations:
            if not getattr(r, "hold", False):  # a hold promises no time (getattr: sweeps drive older code too)
                self.record.first_promise.setdefault(r.workload_id, r.start_time)
        for d in decisions.pending:
            self.record.reasons[d.workload_id] = d.reason
            promise = self.record.first_promise.get(d.workload_id)
            if promise is not None and promise <= self.now:
                self.record.due_reasons.setdefault(d.workload_id, d.reason)
            held = reserved.get(d.workload_id)
            carried = HeldReservation(held.start_time, held.placements) if held and self.carry_reservations else None
            if carried is not None and getattr(held, "hold", False):  # getattr: sweeps drive older code too
                carried = replace(carried, hold=True)
            self.pending[d.workload_id] = replace(self.pending[d.workload_id], nominated=d.nominated,
                                                  reserved=carried)

    def _check_reclaim(self, decisions: Decisions) -> None:
        """No preemption for another queue takes a queue below its GPU guarantee, counted once stops settle:
        its running work that is not stopping and the capacity nominated for its own preemptors (they start
        on it when their victims have stopped). Replayed in the cycle's order: each preemptor's victims leave
        their queues, then its nomination joins its own (a queue may give up work to its own higher-priority
        work first, and then have no more to give to others). The cycle's binds count from its start: a bind
        placed after a preemption can hide a violation, never invent one."""
        victims = {p.victim_id for p in decisions.preemptions}
        nominated = {d.workload_id: placements_usage(d.nominated).gpu_milli for d in decisions.pending if d.nominated}
        settled: Counter[str] = Counter()
        for w in self.running.values():
            if not w.terminating or w.id in victims:
                settled[w.queue] += w.usage.gpu_milli
        new_preemptors = {p.preemptor_id for p in decisions.preemptions}
        for wid, milli in nominated.items():
            if wid not in new_preemptors:
                settled[self._queue_of(wid)] += milli  # nominated in an earlier cycle, its victims still stopping
        for k, p in enumerate(decisions.preemptions):
            victim = self.running.get(p.victim_id)
            if victim is None:
                continue
            settled[victim.queue] -= victim.usage.gpu_milli
            spec = self.queues.get(victim.queue)
            if (victim.usage.gpu_milli and spec is not None and victim.queue != self._queue_of(p.preemptor_id)
                    and settled[victim.queue] < spec.guaranteed.gpu_milli):
                self.record.violations.append(f"t={self.now:g}: queue {victim.queue} reclaimed down to "
                                              f"{settled[victim.queue]} milli GPU, below its guarantee of "
                                              f"{spec.guaranteed.gpu_milli}")
            following = decisions.preemptions[k + 1] if k + 1 < len(decisions.preemptions) else None
            if following is None or following.preemptor_id != p.preemptor_id:  # the preemptor's last victim
                settled[self._queue_of(p.preemptor_id)] += nominated.get(p.preemptor_id, 0)

    def _queue_of(self, workload_id: str) -> str:
        w = self.pending.get(workload_id) or self.templates[workload_id]
        return w.queue

    def _check(self) -> None:
        self._check_capacity()
        usage: dict[str, ResourceVector] = {}
        for w in self.running.values():  # stopping work still holds its capacity
            usage[w.queue] = usage.get(w.queue, ResourceVector()) + w.usage
        for name, used in sorted(usage.items()):
            peak = self.record.peak_queue_usage.get(name, ResourceVector())
            self.record.peak_queue_usage[name] = ResourceVector(*map(max, peak.as_tuple(), used.as_tuple()))
            spec = self.queues.get(name)
            if spec is not None and spec.limit is not None and used.exceeding(spec.limit):
                self.record.violations.append(f"t={self.now:g}: queue {name} holds {used.describe()} over its "
                                              f"limit {spec.limit.describe()}")
