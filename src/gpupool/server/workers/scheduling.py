"""The scheduling loop: a snapshot from the store, one `run_cycle`, its decisions applied in one transaction.

Each step:
1. reads nodes, queues, pending workloads and the replicas that hold resources (read-only transaction);
2. builds the ClusterSnapshot and calls `gpupool.scheduler.run_cycle` (pure) with the same placement policy
   instance every time, and a NeverFitsChecker kept while the nodes stay the same;
3. applies the decisions in one write transaction: Bind -> scheduled with one replica row per placement
   (ports for the rendezvous chosen here), Preempt -> preempted with its replicas marked for stopping,
   Pending -> the reason and queue position that `ls` and `show` display, and the nominated placement;
4. wakes the reconciler, which starts and stops the processes.
A workload whose status changed between 1 and 3 (a cancel) is left alone; the next step sees it.

Incremental passes. Every transaction that changes what step 1 reads increments the store's change sequence
(store/changes.py). The loop keeps what it read with the sequence it read it at; a step that finds the
sequence unchanged uses the kept state without reading the pool again, and when moreover nothing that
depends on the time is due (`scheduler.horizon.unchanged_until`) it does not run the cycle either: it
returns the last decisions, having read one row and written nothing. Step 3 writes only the pending
reasons, positions and nominations that differ from what the store shows. Any change (several submits
together included) is seen by the next step in one full read; a full read also happens every
`FULL_REBUILD_S` whatever the sequence says, after any failed step, and after a restart.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpupool.domain.errors import GpupoolError
from gpupool.domain.lifecycle import CONTROLLER_KINDS
from gpupool.domain.nodes import Node
from gpupool.domain.queues import QueueSpec
from gpupool.domain.replicas import ReplicaState
from gpupool.domain.specs import WorkloadSpec, parse_spec
from gpupool.domain.status import WorkloadStatus, transition
from gpupool.executors.rendezvous import ports_needed
from gpupool.scheduler.cycle import run_cycle
from gpupool.scheduler.decisions import Bind, Decisions, Preempt
from gpupool.scheduler.feasibility import NeverFitsChecker
from gpupool.scheduler.horizon import unchanged_until
from gpupool.scheduler.placement.base import PlacementPolicy
from gpupool.scheduler.placement.registry import make_policy
from gpupool.scheduler.profile import SchedulerProfile
from gpupool.scheduler.snapshot import ClusterSnapshot
from gpupool.scheduler.types import HeldReservation, PendingWorkload, ReplicaPlacement, RunningWorkload
from gpupool.server.services.arrays import IDS_PER_QUERY, PendingRow, pending_to_offer, stored_specs, uncapped_offer
from gpupool.server.services.feasibility import nodes_fingerprint, pending_from_spec
from gpupool.server.services.pool import queue_specs
from gpupool.server.services.workloads import preempt as preempt_workload
from gpupool.store import changes
from gpupool.store.convert import node_from_row, placement_from_json, placement_to_json
from gpupool.store.db import Database
from gpupool.store.orm import ReplicaRow, WorkloadRow
from gpupool.store.repos import gpus as gpu_repo
from gpupool.store.repos import nodes as node_repo
from gpupool.store.repos import workloads as repo

log = logging.getLogger("gpupool.scheduler")
PortPicker = Callable[[str, int], list[int]]  # (node, count) -> free ports on that node (Executor.free_ports)
# The safety net: a full read at least this often (seconds) even when the change sequence says nothing changed,
# for a change made outside the store's sessions (by hand, by another program). 30 s: a full read of a pool
# with 10,000 pending workloads costs about half a second (benchmarks/control_plane/README.md): about 2%
# of one core, and such a change is picked up within half a minute.
FULL_REBUILD_S = 30.0
# a waiting workload's scheduler view and what it was made from: (spec, (queue, submit time, stored nomination,
# stored fair-share preemptors), view)
_PendingView = tuple[WorkloadSpec, tuple[str, float, Any, Any], PendingWorkload]
Shown = tuple[str | None, int | None, list[Any] | None]  # a pending row's reason, queue position, nomination


@dataclass
class ClusterState:
    """What one cycle reads from the store."""

    nodes: list[Node]
    fingerprint: str
    queues: dict[str, QueueSpec]
    pending: list[PendingWorkload]
    running: list[RunningWorkload]
    specs: dict[int, WorkloadSpec] = field(default_factory=dict)
    gpu_versions: dict[str, int] = field(default_factory=dict)
    shown: dict[int, Shown] = field(default_factory=dict)  # what the store shows for each pending workload


@dataclass
class KeptState:
    """A state read in full at change sequence `seq` (clock time `read_at`), and until when the last
    cycle's decisions on it stand (`scheduler.horizon`; -inf before a cycle ran on it)."""

    seq: int
    state: ClusterState
    read_at: float
    quiet_until: float = -math.inf


class SchedulingLoop:
    """One scheduler for the pool; `step()` runs one cycle (see the module docstring)."""

    def __init__(self, db: Database, clock: Callable[[], float], profile: SchedulerProfile,
                 pick_ports: PortPicker, on_change: Callable[[], None] = lambda: None,
                 policy: PlacementPolicy | None = None, full_rebuild_s: float = FULL_REBUILD_S) -> None:
        self.db = db
        self.full_rebuild_s = full_rebuild_s  # 0: read everything on every step (the kept state is never used)
        self.clock = clock
        self.profile = profile
        self.policy = policy or make_policy(profile.policy)
        self.pick_ports = pick_ports
        self.on_change = on_change
        self._checker: NeverFitsChecker | None = None
        self._checker_key = ""
        self._observed_up_to = 0
        self._spec_cache: dict[int, WorkloadSpec] = {}
        # a waiting workload's scheduler view, with what it was made from (see _pending_of)
        self._pending_cache: dict[int, _PendingView] = {}
        self._running_terms: dict[int, tuple[bool, Any]] = {}  # a running workload's (preemptible, max_runtime)
        self.last_decisions: Decisions | None = None
        self._held: dict[str, HeldReservation] = {}
        self._nodes_key: tuple[Any, ...] = ()
        self._nodes_view: tuple[list[Node], str, dict[str, int]] | None = None
        self._empty_snapshot: ClusterSnapshot | None = None  # of the nodes it was built from, nothing assumed
        self._kept: KeptState | None = None
        self.full_reads = 0  # steps that read the pool in full
        self.skipped_cycles = 0  # steps that found nothing new and nothing due, and ran no cycle

    def step(self) -> Decisions:
        """Run one cycle and apply it; returns the decisions. A step that finds nothing changed in the store
        since its kept state was read, and nothing time-dependent due, runs no cycle and returns the last
        decisions (see the module docstring). A failed step drops the kept state."""
        now = self.clock()
        try:
            return self._step(now)
        except BaseException:
            self._kept = None
            raise

    def held_reservations(self) -> dict[str, HeldReservation]:
        """The reservations the last cycle promised, by workload id (a copy)."""
        return dict(self._held)

    def keep_held(self, held: dict[str, HeldReservation]) -> None:
        """Take `held` as the promised reservations: a loop that does not step itself (the dry runs' twin of a
        scheduler in another process) is given the stepping loop's, so that `what_if` keeps its promises."""
        self._held = dict(held)

    def kept_state(self) -> KeptState | None:
        """The state the next step uses when the store's change sequence is still `seq` (None: it reads)."""
        return self._kept

    def read_state(self) -> ClusterState:
        """A full read of what a step reads (read-only; changes nothing the loop keeps but the spec cache)."""
        with self.db.session(write=False) as session:
            return self._load(session)

    def _step(self, now: float) -> Decisions:
        state, kept = self._state(now)
        if kept is not None and now < kept.quiet_until and self.last_decisions is not None:
            self.skipped_cycles += 1
            return self.last_decisions
        if state.fingerprint != self._checker_key or self._checker is None:
            self._checker = NeverFitsChecker(state.nodes)
            self._checker_key = state.fingerprint
        self._observe(state)
        snapshot = self._snapshot_of(state.nodes)
        for running in state.running:  # forced: what a node that left or shrank no longer has is skipped
            snapshot.assume_all(running.placements, force=True)
        pending = [replace(w, reserved=self._held[w.id]) if w.id in self._held else w for w in state.pending]
        decisions = run_cycle(snapshot, pending, state.running, state.queues, self.profile, now,
                              policy=self.policy, never_fits=self._checker)
        if self._kept is not None:
            self._kept.quiet_until = -math.inf if self.policy.draws_randomly else \
                unchanged_until(pending, state.running, decisions, self.profile, now, state.queues)
        # reservations are kept in memory between cycles (after a restart they are simply made again)
        self._held = {r.workload_id: HeldReservation(r.start_time, r.placements, r.hold)
                      for r in decisions.reservations}
        changed = False
        shows = _changed_shows(decisions, state)
        if decisions.binds or decisions.preemptions or shows:
            with self.db.session() as session:
                changed = self._apply(session, decisions, state, now, shows)
        self.last_decisions = decisions
        if changed:
            self.on_change()
        return decisions

    def _snapshot_of(self, nodes: list[Node]) -> ClusterSnapshot:
        """A snapshot of `nodes` with nothing assumed: a copy of the one kept from the last step when it was built
        from these very node objects (they are immutable and rebuilt only when a node's row changes), else built
        and kept. Copying its arrays costs a fraction of building them from 64 nodes' cards on every cycle."""
        empty = self._empty_snapshot
        if empty is None or len(empty.nodes) != len(nodes) or not all(
                a is b for a, b in zip(empty.nodes, sorted(nodes, key=lambda n: n.name), strict=True)):
            empty = self._empty_snapshot = ClusterSnapshot(nodes)
        return empty.clone()

    def what_if(self, candidate: PendingWorkload) -> Decisions:
        """The decisions one cycle would make now with `candidate` added to the pending workloads (a dry run):
        nothing is applied or remembered, and a fresh placement policy is used so no cache or learned target
        changes. Read-only; safe to call from request threads while the loop runs."""
        now = self.clock()
        with self.db.session(write=False) as session:
            state = self._load(session)
        snapshot = ClusterSnapshot(state.nodes)
        for running in state.running:
            snapshot.assume_all(running.placements, force=True)
        held = dict(self._held)
        pending = [replace(w, reserved=held[w.id]) if w.id in held else w for w in state.pending]
        return run_cycle(snapshot, [*pending, candidate], state.running, state.queues, self.profile, now,
                         policy=make_policy(self.profile.policy), never_fits=NeverFitsChecker(state.nodes))

    # ------------------------------------------------------------------------------------- reading
    def _state(self, now: float) -> tuple[ClusterState, KeptState | None]:
        """The state for this step, and the kept state when that is what it is (nothing changed since)."""
        with self.db.session(write=False) as session:
            seq = changes.current(session)  # first: every change counted in it is visible to the reads below
            kept = self._kept
            if kept is not None and seq == kept.seq and now - kept.read_at < self.full_rebuild_s:
                return kept.state, kept
            state = self._load(session)
        self.full_reads += 1
        self._kept = None if seq is None else KeptState(seq, state, now)
        return state, None

    @staticmethod
    def _spec(session: Session, known: dict[int, WorkloadSpec], row: PendingRow) -> WorkloadSpec | None:
        """The parsed spec of a pending row: from `known` (kept while it waits: a spec never changes), else
        parsed from the stored one (read here when the row came without it) and kept in `known`; None when
        the workload is gone."""
        spec = known.get(row.id)
        if spec is None:
            stored = row.spec if row.spec is not None else stored_specs(session, [row.id]).get(row.id)
            if stored is None:
                return None
            spec = known[row.id] = parse_spec(stored)
        return spec

    def _load(self, session: Session) -> ClusterState:
        nodes, fingerprint, gpu_versions = self._nodes(session)
        # a job array's tasks beyond its cap of tasks at once, or beyond what the pool could hold, are not
        # offered (see services.arrays); the specs already parsed are not read again
        reservations = self.profile.reservation_depth if self.profile.backfill else 0
        known = self._spec_cache  # this dict: what_if reads from a request thread while the loop replaces it
        pending_rows = pending_to_offer(session, uncapped_offer(nodes, reservations), known_specs=known)
        pending: list[PendingWorkload] = []
        specs: dict[int, WorkloadSpec] = {}
        shown: dict[int, Shown] = {}
        views: dict[int, _PendingView] = {}
        for row in pending_rows:
            if row.kind in CONTROLLER_KINDS:
                continue  # a controller owns children; it is never placed itself
            try:
                spec = self._spec(session, known, row)
            except GpupoolError:
                log.exception("workload %s has a spec this version cannot read; skipping it", row.id)
                continue
            if spec is None:
                continue  # gone since the pending rows were read
            specs[row.id] = spec
            pending.append(self._pending_of(row, spec, views))
            shown[row.id] = (row.pending_reason, row.queue_position, row.nominated)
        self._spec_cache = {k: v for k, v in self._spec_cache.items() if k in specs}
        self._pending_cache = views
        running = self._running(session)
        return ClusterState(list(nodes), fingerprint, queue_specs(session), pending, running, specs,
                            dict(gpu_versions), shown)

    def _pending_of(self, row: PendingRow, spec: WorkloadSpec,
                    views: dict[int, _PendingView]) -> PendingWorkload:
        """The scheduler's view of the waiting `row` (whose parsed spec is `spec`), recorded in `views`: the one
        the last read made when it was made from the same spec object, queue, submit time, nomination and
        fair-share preemptors (a view is a function of these; a backlog of thousands is not rebuilt for each
        new submit), else new."""
        key = (row.queue, row.submitted_at, row.nominated, row.fair_share_preempted_by)
        kept = self._pending_cache.get(row.id)
        if kept is not None and kept[0] is spec and kept[1] == key:
            workload = kept[2]
        else:
            nominated = tuple(placement_from_json(p) for p in row.nominated) if row.nominated else None
            preempted_by = frozenset(str(i) for i in row.fair_share_preempted_by or ())
            workload = pending_from_spec(str(row.id), row.queue, spec, row.submitted_at, nominated, preempted_by)
        views[row.id] = (spec, key, workload)
        return workload

    def _nodes(self, session: Session) -> tuple[list[Node], str, dict[str, int]]:
        """The nodes, their fingerprint and their GPU versions, rebuilt from the rows only when the stored
        text of a node's capacity, or a GPU version, changed since the last cycle (decoding every node's
        GPUs on every cycle was a top cost of a busy pool). Should a node change between the two reads,
        the next cycle sees a new key and rebuilds."""
        key = node_repo.capacity_fingerprint(session)
        if self._nodes_view is None or key != self._nodes_key:
            rows = node_repo.list_nodes(session)
            self._nodes_view = ([node_from_row(r) for r in rows], nodes_fingerprint(rows),
                                {r.name: r.gpus_version for r in rows})
            self._nodes_key = key
        return self._nodes_view

    def _running(self, session: Session) -> list[RunningWorkload]:
        """The workloads that hold resources, from their live replicas' columns and their rows' columns (no ORM
        objects); what a running workload's spec says (preemptible, max_runtime) is read once and kept."""
        by_workload: dict[int, list[Any]] = defaultdict(list)
        for replica in repo.live_replica_holdings(session):
            by_workload[replica.workload_id].append(replica)
        if not by_workload:
            self._running_terms = {}
            return []
        ids = sorted(by_workload)
        rows = [row for start in range(0, len(ids), IDS_PER_QUERY) for row in session.execute(
            select(WorkloadRow.id, WorkloadRow.queue, WorkloadRow.priority, WorkloadRow.started_at, WorkloadRow.status)
            .where(WorkloadRow.id.in_(ids[start:start + IDS_PER_QUERY]))).all()]
        known = self._running_terms
        missing = [int(row.id) for row in rows if row.id not in known]
        for workload_id, stored in stored_specs(session, missing).items():
            known[workload_id] = (bool(stored.get("preemptible", True)), stored.get("max_runtime"))
        self._running_terms = {int(row.id): known[row.id] for row in rows if row.id in known}
        running = []
        for row in sorted(rows, key=lambda r: int(r.id)):
            if row.id not in known:
                continue  # gone since its replicas were read
            replicas = by_workload[row.id]
            preemptible, max_runtime = known[row.id]
            terminating = not WorkloadStatus(row.status).is_active() or any(r.stop_requested_at for r in replicas)
            running.append(RunningWorkload(
                id=str(row.id), queue=row.queue, placements=tuple(placement_from_json(r.placement) for r in replicas),
                priority=row.priority, start_time=row.started_at or min(r.created_at for r in replicas),
                preemptible=preemptible, max_runtime_s=max_runtime, terminating=terminating))
        return running

    def _observe(self, state: ClusterState) -> None:
        """Let a learning policy see every newly submitted replica request once."""
        newest = max(state.specs, default=0)
        if self.policy.learns_target:
            for workload_id in sorted(k for k in state.specs if k > self._observed_up_to):
                for role in state.specs[workload_id].roles:
                    for _ in range(role.replicas):
                        self.policy.observe(role.resources)
        self._observed_up_to = max(self._observed_up_to, newest)

    # ------------------------------------------------------------------------------------ applying
    def _apply(self, session: Session, decisions: Decisions, state: ClusterState, now: float,
               shows: dict[int, Shown]) -> bool:
        changed = False
        stale = self._stale_gpu_nodes(session, decisions, state)
        binds = [bind for bind in decisions.binds  # skipped: cards changed since the snapshot (a sharing
                 if not any(p.node in stale for p in bind.placements)]  # mode, MIG layout or health mark)
        rows = repo.workloads_by_ids(session, [int(bind.workload_id) for bind in binds], for_update=True)
        for bind in binds:  # one query locks them all, in id order, as every writer of several does
            row = rows.get(int(bind.workload_id))
            changed |= row is not None and self._bind(session, row, bind, state.specs.get(row.id), now)
        for preempt in decisions.preemptions:
            changed |= self._preempt(session, preempt, now)
        self._show_pending(session, shows, state)
        return changed

    @staticmethod
    def _show_pending(session: Session, shows: dict[int, Shown], state: ClusterState) -> None:
        """Write the reason, queue position and nomination of each waiting workload in `shows` (those that
        differ from what the store shows, `state.shown`, which is kept up to date here)."""
        if not shows:
            return
        rows = session.scalars(select(WorkloadRow).where(WorkloadRow.id.in_(sorted(shows)))
                               .order_by(WorkloadRow.id)).all()
        for row in rows:
            if row.current_status != WorkloadStatus.PENDING:
                continue
            row.pending_reason, row.queue_position, row.nominated = state.shown[row.id] = shows[row.id]

    @staticmethod
    def _stale_gpu_nodes(session: Session, decisions: Decisions, state: ClusterState) -> set[str]:
        """Nodes of the binds whose GPUs changed since the snapshot was read; the node rows stay locked until
        the binds are written, so a GPU change and a bind on one node happen one after the other."""
        names = sorted({p.node for bind in decisions.binds for p in bind.placements})
        versions = gpu_repo.lock_node_versions(session, names)
        return {name for name in names if name not in versions or versions[name] != state.gpu_versions.get(name)}

    def _bind(self, session: Session, row: WorkloadRow, bind: Bind, spec: WorkloadSpec | None, now: float) -> bool:
        """Bind the locked `row` as `bind` places it; False when it is no longer pending (or has no spec)."""
        if spec is None or row.current_status != WorkloadStatus.PENDING:
            return False
        numbers = {(role.role, ordinal): number for number, role, ordinal in spec.replica_roles()}
        row.attempt += 1
        for p in bind.placements:
            session.add(ReplicaRow(workload_id=row.id, attempt=row.attempt, number=numbers[(p.role, p.ordinal)],
                                   role=p.role, ordinal=p.ordinal, node=p.node, placement=placement_to_json(p),
                                   state=ReplicaState.PENDING.value, created_at=now, message="",
                                   endpoints=self._endpoints(p.node, spec.ports)))
        row.nominated = None
        kind = spec.rendezvous()
        needed = ports_needed(kind, len(bind.placements))
        rank0 = next(p.node for p in bind.placements if numbers[(p.role, p.ordinal)] == 0)
        row.rendezvous_ports = self.pick_ports(rank0, needed) if needed else None  # chosen on the node of rank 0
        transition(row, WorkloadStatus.SCHEDULED, f"placed {_describe(bind.placements)}", now)
        return True

    def _endpoints(self, node: str, ports: tuple[int, ...]) -> dict[str, Any] | None:
        """The ports a replica's spec names, each given a free port on its node (host and readiness follow
        at launch)."""
        if not ports:
            return None
        chosen = self.pick_ports(node, len(ports))
        return {str(name): {"port": port} for name, port in zip(ports, chosen, strict=True)}

    def _preempt(self, session: Session, preempt: Preempt, now: float) -> bool:
        row = repo.workload_by_id(session, int(preempt.victim_id), for_update=True)
        if row is None or not row.current_status.is_active():
            return False
        preempt_workload(session, row, preempt.reason, now)  # a service replica drains first
        if preempt.across_queues:  # requeued, it never preempts its preemptor for fair share in turn
            row.fair_share_preempted_by = sorted({*(row.fair_share_preempted_by or ()), int(preempt.preemptor_id)})
        return True


def _changed_shows(decisions: Decisions, state: ClusterState) -> dict[int, Shown]:
    """Workload id -> the reason, position and nomination to show, for each waiting workload whose differ
    from what the store shows."""
    out: dict[int, Shown] = {}
    for decision in decisions.pending:
        nominated = [placement_to_json(p) for p in decision.nominated] if decision.nominated else None
        shown: Shown = (decision.reason, decision.position, nominated)
        if state.shown.get(int(decision.workload_id)) != shown:
            out[int(decision.workload_id)] = shown
    return out


def _describe(placements: tuple[ReplicaPlacement, ...]) -> str:
    by_node: dict[str, list[str]] = defaultdict(list)
    for p in placements:
        gpus = ",".join(f"{g.index}" + (f"({g.milli / 1000:g})" if g.milli < 1000 else "") for g in p.gpus)
        by_node[p.node].append(f"{p.role} {p.ordinal}" + (f" on GPU {gpus}" if gpus else ""))
    return "; ".join(f"{node}: {', '.join(items)}" for node, items in sorted(by_node.items()))
