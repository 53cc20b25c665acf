"""Trace replay: the real scheduling cycle (queues, gang, backfill, preemption) on a virtual clock.

Events, in time order (at equal times: completions, then arrivals, then a scheduling cycle):
- arrival: the workload becomes pending (and a learning policy observes its request);
- completion: a running workload ends and frees its placements; a workload that declares `max_runtime_s`
  and would run longer is stopped when that much time has passed since its start and ends failed (as the
  server's reconciler does: `failed`, "ran longer than its max_runtime", no retry);
- cycle: `run_cycle` over everything pending; binds start at once and complete `duration` later; victims
  of a preemption stop at once and are requeued with their original submit time (they restart from the
  beginning); the preemptor is bound to its nominated placement in a cycle at the same instant. Workloads
  that can never run are rejected. Cycles run at every event time, or on a grid of `cycle_interval_s`.

`duration_scale` divides both the true duration and the declared max_runtime of every workload, so the
scheduler's reservations and the enforced limit stay consistent. The engine records, besides each
queue's GPU usage, the set of queues with waiting workloads over time (for the fairness metrics).

The engine never reads the wall clock; pass `timer` (e.g. time.perf_counter) to measure how long the
scheduler itself took, for decisions per second.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from gpupool.domain.nodes import Node
from gpupool.domain.queues import QueueSpec
from gpupool.scheduler.cycle import run_cycle
from gpupool.scheduler.decisions import Decisions
from gpupool.scheduler.feasibility import NeverFitsChecker
from gpupool.scheduler.placement.registry import make_policy
from gpupool.scheduler.profile import SchedulerProfile
from gpupool.scheduler.snapshot import ClusterSnapshot
from gpupool.scheduler.types import HeldReservation, ReplicaPlacement, RunningWorkload
from gpupool.sim.workloads import SimWorkload

_COMPLETE, _ARRIVE, _CYCLE = 0, 1, 2


@dataclass
class WorkloadOutcome:
    """What happened to one workload: first start, end, preemptions, and its last pending reason."""

    workload: SimWorkload
    arrival: float = 0.0  # on the replay's clock (after time compression)
    first_start: float | None = None
    end: float | None = None
    preemptions: int = 0
    rejected: str | None = None
    failed: str | None = None  # set when it was stopped at its max_runtime
    reasons: list[str] = field(default_factory=list)  # each pending reason, in order, without repeats

    @property
    def last_reason(self) -> str:
        """The latest pending reason ('' if it never waited)."""
        return self.reasons[-1] if self.reasons else ""


@dataclass
class ReplayResult:
    """Outcomes per workload and the time series the metrics are computed from."""

    capacity_gpu_milli: int
    outcomes: dict[str, WorkloadOutcome]
    allocation: list[tuple[float, int]] = field(default_factory=list)  # (time, GPU milli allocated)
    queue_usage: list[tuple[float, dict[str, int]]] = field(default_factory=list)  # (time, GPU milli per queue)
    waiting: list[tuple[float, frozenset[str]]] = field(default_factory=list)  # (time, queues with work waiting)
    cycles: int = 0
    decisions: int = 0
    preemptions: int = 0
    scheduler_seconds: float = 0.0
    end_time: float = 0.0


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    """Knobs of a replay: the scheduler profile, the queues, time compression and the cycle grid."""

    profile: SchedulerProfile = field(default_factory=SchedulerProfile)
    queues: Mapping[str, QueueSpec] = field(default_factory=dict)
    time_scale: float = 1.0  # arrivals at arrival / time_scale: > 1 raises the load
    duration_scale: float = 1.0  # durations divided by this too
    cycle_interval_s: float = 0.0  # 0: a cycle at every event time
    seed: int = 0


class ReplayEngine:
    """Replays `workloads` on `nodes`; see the module docstring."""

    def __init__(self, nodes: Sequence[Node], workloads: Sequence[SimWorkload], config: ReplayConfig,
                 timer: Callable[[], float] | None = None) -> None:
        if config.time_scale <= 0 or config.duration_scale <= 0 or config.cycle_interval_s < 0:
            raise ValueError("time_scale and duration_scale must be above 0, cycle_interval_s not negative")
        self.config, self.timer = config, timer
        self.snap = ClusterSnapshot(nodes)
        self.never_fits = NeverFitsChecker(nodes)
        self.policy = make_policy(config.profile.policy, random.Random(config.seed))
        if config.duration_scale != 1.0:
            workloads = [_scaled(w, config.duration_scale) for w in workloads]
        self.workloads = {w.name: w for w in workloads}
        self.waiting_count: dict[str, int] = {}
        self.pending: dict[str, tuple[ReplicaPlacement, ...] | None] = {}
        self.held: dict[str, HeldReservation] = {}  # reservations handed back to the next cycle
        self.fair_share_preempted_by: dict[str, frozenset[str]] = {}  # handed back to the next cycles
        self.running: dict[str, RunningWorkload] = {}
        self.run_ids: dict[str, int] = {}
        self.events: list[tuple[float, int, int, str]] = []
        self.sequence = 0
        self.cycle_at: set[float] = set()
        self.queue_gpu: dict[str, int] = {}
        self.result = ReplayResult(int(self.snap.cap_gpu.sum()), {
            w.name: WorkloadOutcome(w, w.arrival_s / config.time_scale) for w in workloads})
        for w in workloads:
            self._push(w.arrival_s / config.time_scale, _ARRIVE, w.name)

    def _push(self, time: float, kind: int, name: str) -> None:
        self.sequence += 1
        heapq.heappush(self.events, (time, kind, self.sequence, name))

    def _schedule_cycle(self, now: float) -> None:
        interval = self.config.cycle_interval_s
        at = now if interval == 0 else (int(now // interval) + (now % interval > 0)) * interval
        if at not in self.cycle_at:
            self.cycle_at.add(at)
            self._push(at, _CYCLE, "")

    def run(self, progress: Callable[[float, int, int], None] | None = None) -> ReplayResult:
        """Process every event; `progress(now, finished, total)` is called every 500 events."""
        handled = 0
        while self.events:
            now, kind, _, name = heapq.heappop(self.events)
            if kind == _ARRIVE:
                self._arrive(now, name)
            elif kind == _COMPLETE:
                self._complete(now, name)
            else:
                self.cycle_at.discard(now)
                self._cycle(now)
            handled += 1
            if progress is not None and handled % 500 == 0:
                finished = sum(o.end is not None or o.rejected is not None for o in self.result.outcomes.values())
                progress(now, finished, len(self.workloads))
            self.result.end_time = now
        return self.result

    def _wait(self, now: float, name: str, nominated: tuple[ReplicaPlacement, ...] | None) -> None:
        if name not in self.pending:
            queue = self.workloads[name].queue
            self.waiting_count[queue] = self.waiting_count.get(queue, 0) + 1
            if self.waiting_count[queue] == 1:
                self._record_waiting(now)
        self.pending[name] = nominated

    def _unwait(self, now: float, name: str) -> None:
        del self.pending[name]
        queue = self.workloads[name].queue
        self.waiting_count[queue] -= 1
        if not self.waiting_count[queue]:
            del self.waiting_count[queue]
            self._record_waiting(now)

    def _record_waiting(self, now: float) -> None:
        queues = frozenset(self.waiting_count)
        if self.result.waiting and self.result.waiting[-1][0] == now:
            self.result.waiting[-1] = (now, queues)
        else:
            self.result.waiting.append((now, queues))

    def _arrive(self, now: float, name: str) -> None:
        workload = self.workloads[name]
        self._wait(now, name, None)
        if self.policy.learns_target:
            self.policy.observe(workload.request)
        self._schedule_cycle(now)

    def _complete(self, now: float, token: str) -> None:
        name, _, run_id = token.rpartition("#")
        current = self.running.get(name)
        if current is None or self.run_ids.get(name) != int(run_id):
            return  # that run was preempted earlier
        self._stop(now, current)
        outcome = self.result.outcomes[name]
        outcome.end = now
        limit = self.workloads[name].max_runtime_s
        if limit is not None and self.workloads[name].duration_s > limit:
            outcome.failed = f"ran longer than its max_runtime ({limit:g}s); stopped"
        if self.pending:
            self._schedule_cycle(now)

    def _stop(self, now: float, workload: RunningWorkload) -> None:
        for p in workload.placements:
            self.snap.forget(p)
        del self.running[workload.id]
        self._record_usage(now, workload.queue, -workload.usage.gpu_milli)

    def _cycle(self, now: float) -> None:
        if not self.pending:
            return
        pending = [replace(self.workloads[n].pending(nominated), reserved=self.held.get(n),
                           fair_share_preempted_by=self.fair_share_preempted_by.get(n, frozenset()))
                   for n, nominated in sorted(self.pending.items())]
        started = self.timer() if self.timer else 0.0
        decisions = run_cycle(self.snap, pending, list(self.running.values()), self.config.queues,
                              self.config.profile, now, policy=self.policy, never_fits=self.never_fits)
        if self.timer:
            self.result.scheduler_seconds += self.timer() - started
        self.result.cycles += 1
        self.result.decisions += len(pending)
        self.held = {r.workload_id: HeldReservation(r.start_time, r.placements, r.hold)
                     for r in decisions.reservations}
        self._apply(now, decisions)

    def _apply(self, now: float, decisions: Decisions) -> None:
        for preempt in decisions.preemptions:
            victim = self.running.get(preempt.victim_id)
            if victim is not None:
                self._stop(now, victim)
                self._wait(now, victim.id, None)
                self.result.outcomes[victim.id].preemptions += 1
                self.result.preemptions += 1
                if preempt.across_queues:
                    known = self.fair_share_preempted_by.get(victim.id, frozenset())
                    self.fair_share_preempted_by[victim.id] = known | {preempt.preemptor_id}
        for bind in decisions.binds:
            self._start(now, bind.workload_id, bind.placements)
        for waiting in decisions.pending:
            outcome = self.result.outcomes[waiting.workload_id]
            if outcome.last_reason != waiting.reason:
                outcome.reasons.append(waiting.reason)
            if waiting.reason.startswith("can never run"):
                outcome.rejected = waiting.reason
                self._unwait(now, waiting.workload_id)
            else:
                self._wait(now, waiting.workload_id, waiting.nominated)
        if decisions.preemptions:
            self._push(now, _CYCLE, "")  # victims stopped at once: bind the preemptors now

    def _start(self, now: float, name: str, placements: tuple[ReplicaPlacement, ...]) -> None:
        workload = self.workloads[name]
        self.snap.assume_all(placements)
        self.running[name] = RunningWorkload(name, workload.queue, placements, workload.priority, now,
                                             workload.preemptible, workload.max_runtime_s)
        self._unwait(now, name)
        self.run_ids[name] = self.run_ids.get(name, 0) + 1
        outcome = self.result.outcomes[name]
        if outcome.first_start is None:
            outcome.first_start = now
        runs_for = workload.duration_s
        if workload.max_runtime_s is not None:
            runs_for = min(runs_for, workload.max_runtime_s)
        self._push(now + runs_for, _COMPLETE, f"{name}#{self.run_ids[name]}")
        self._record_usage(now, workload.queue, self.running[name].usage.gpu_milli)

    def _record_usage(self, now: float, queue: str, change: int) -> None:
        self.queue_gpu[queue] = self.queue_gpu.get(queue, 0) + change
        per_queue = dict(self.queue_gpu)
        total = sum(per_queue.values())
        if self.result.allocation and self.result.allocation[-1][0] == now:
            self.result.allocation[-1] = (now, total)
            self.result.queue_usage[-1] = (now, per_queue)
        else:
            self.result.allocation.append((now, total))
            self.result.queue_usage.append((now, per_queue))


def _scaled(workload: SimWorkload, scale: float) -> SimWorkload:
    limit = workload.max_runtime_s
    return replace(workload, duration_s=workload.duration_s / scale,
                   max_runtime_s=None if limit is None else limit / scale)
