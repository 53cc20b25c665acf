"""The GPU sampler: every `sample_interval_s`, each local node's GPUs are read and digested.

Each step:
1. reads from the store every node's cards and the GPU allocations of the replicas that hold resources
   (read-only transaction), and asks the executor for each started replica's session id (cached per
   replica) — the ids the monitor maps GPU processes to replicas with;
2. per node: `backend.sample(now)`, then `GpuMonitor.observe(sample, allocations, owners)`;
3. records the reports' events in one write transaction (`services.gpu_events`: over-use, with the kill
   policy a failed workload whose replicas are stopped; idle allocations; unhealthy marks);
4. updates the Prometheus metrics (GPU readings, workload memory, idle allocations, over-use counts, queue
   depth and allocation ratios), and adds the step's busy / idle GPU-seconds of each started replica to the
   usage ledger (`server.usage_ledger`), written to the store every `usage_flush_interval_s`;
5. every `mps_check_interval_s`, checks the MPS daemons of cards in mps mode and restarts failed ones;
6. with HAMi-core configured, removes the shared cache files of replicas that are no longer live;
7. a node whose NVML was unavailable at start-up and now samples GPUs (the backend retries nvmlInit) is
   discovered again and its cards stored.

All state that matters lives in the store or is rebuilt from the next sample, so the worker is safe to
restart; a failing node is logged and skipped, the others are still sampled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gpupool.domain.nodes import Gpu, Node
from gpupool.domain.placement import ReplicaPlacement
from gpupool.domain.status import WorkloadStatus
from gpupool.executors.base import Capability, Executor, ExecutorError, Handle
from gpupool.gpu.monitor import MonitorReport, ReplicaKey, allocations_for
from gpupool.gpu.sharing import sweep_hami_caches
from gpupool.scheduler.snapshot import ClusterSnapshot
from gpupool.server.gpu_runtime import GpuRuntime
from gpupool.server.services.gpu_admin import adopt_discovered_gpus, reconcile_mps
from gpupool.server.services.gpu_events import record_report
from gpupool.server.usage_ledger import HeldShare
from gpupool.store.convert import gpu_from_json, node_from_row, placement_from_json
from gpupool.store.db import Database
from gpupool.store.orm import WorkloadRow
from gpupool.store.repos import accounts, queues
from gpupool.store.repos import nodes as node_repo
from gpupool.store.repos import workloads as repo

log = logging.getLogger("gpupool.sampler")
FORGET_ENDED_AFTER_S = 600.0  # the over-use counters of an ended workload stay this long
WORKLOAD_SERIES_KEEP_S = 86_400.0  # the memory history of an ended workload stays a day


@dataclass(frozen=True, slots=True)
class _Replica:
    id: int
    key: ReplicaKey
    node: str
    handle: Handle | None
    placement: ReplicaPlacement
    project_id: int = -1
    user_id: int = -1
    started_at: float | None = None


@dataclass
class _View:
    """What one step reads from the store."""

    cards: dict[str, tuple[Gpu, ...]]
    nodes: list[Node]
    replicas: list[_Replica]
    queue_depth: dict[str, int] = field(default_factory=dict)


def _read_view(session: Session) -> _View:
    rows = node_repo.list_nodes(session)
    live = repo.live_replicas(session)
    workload_ids = sorted({r.workload_id for r in live})
    projects = accounts.project_names(session)
    owner_of = {wid: (project, user) for wid, project, user in session.execute(
        select(WorkloadRow.id, WorkloadRow.project_id, WorkloadRow.user_id).where(WorkloadRow.id.in_(workload_ids)))
    } if workload_ids else {}
    replicas = []
    for r in live:
        project_id, user_id = owner_of.get(r.workload_id, (-1, -1))
        replicas.append(_Replica(r.id, ReplicaKey(str(r.workload_id), r.number, projects.get(project_id, "")),
                                 r.node, dict(r.handle) if r.handle else None, placement_from_json(r.placement),
                                 project_id, user_id, r.started_at))
    waiting = [WorkloadStatus.PENDING.value, WorkloadStatus.PREEMPTED.value]
    depth = dict.fromkeys((q.name for q in queues.list_queues(session)), 0)
    for queue, count in session.execute(select(WorkloadRow.queue, func.count()).where(WorkloadRow.status.in_(waiting))
                                        .group_by(WorkloadRow.queue)):
        depth[str(queue)] = int(count)
    return _View({r.name: tuple(gpu_from_json(g) for g in r.gpus) for r in rows}, [node_from_row(r) for r in rows],
                 replicas, depth)


class GpuSampler:
    """Samples the GPUs of every local node (see the module docstring); `step()` does one pass."""

    def __init__(self, db: Database, clock: Callable[[], float], runtime: GpuRuntime, executor: Executor,
                 on_stop: Callable[[], None] = lambda: None, mps_check_interval_s: float = 30.0) -> None:
        self.db = db
        self.clock = clock
        self.runtime = runtime
        self.executor = executor
        self.on_stop = on_stop
        self.mps_check_interval_s = mps_check_interval_s
        self._sessions: dict[int, int] = {}
        self._last_live: dict[str, float] = {}
        self._next_mps_check = 0.0

    def step(self) -> None:
        """One pass over every local node."""
        if not self.runtime.nodes:
            return
        now = self.clock()
        with self.db.session(write=False) as session:
            view = _read_view(session)
        reports = self._observe(view, self._owners(view.replicas), now)
        if any(r.overuse or r.newly_idle or r.health for r in reports.values()):
            with self.db.session() as session:
                stopped = [record_report(session, report, now) for _, report in sorted(reports.items())]
            if any(stopped):
                self.on_stop()
        self._update_metrics(view, reports, now)
        self._record_usage(view, reports, now)
        if now >= self._next_mps_check:
            self._next_mps_check = now + self.mps_check_interval_s
            for name in sorted(self.runtime.nodes):
                reconcile_mps(self.db, self.runtime, name, now)
        if self.runtime.sharing.hami_library is not None:
            sweep_hami_caches(self.runtime.sharing, {r.id for r in view.replicas})
        for name, report in sorted(reports.items()):
            node = self.runtime.nodes.get(name)
            if node is not None and report.gpus and node.local.inventory.unavailable is not None:
                adopt_discovered_gpus(self.db, self.runtime, name, now)

    def _record_usage(self, view: _View, reports: dict[str, MonitorReport], now: float) -> None:
        """Add this step's busy / idle GPU-seconds to the usage ledger; flush it when due (a failed flush is
        logged and its counters kept for the next one)."""
        utilisation = {(name, g.index): g.utilization_pct for name, report in reports.items() for g in report.gpus}
        shares = [HeldShare(r.id, r.project_id, r.user_id, r.started_at, r.placement.node, g.index,
                            g.milli)
                  for r in view.replicas if r.started_at is not None and r.project_id >= 0
                  for g in r.placement.gpus if g.milli > 0]
        ledger = self.runtime.ledger
        ledger.observe(shares, utilisation, now, self.runtime.settings.idle_max_pct)
        try:
            ledger.flush_if_due(self.db, now)
        except Exception:
            log.exception("writing the usage ledger failed; its counters are kept for the next flush")

    def _owners(self, replicas: list[_Replica]) -> dict[int, ReplicaKey]:
        """Session id -> replica, for started replicas whose executor can say (cached per replica)."""
        if Capability.SESSION_IDS not in self.executor.capabilities:
            return {}
        live = {r.id for r in replicas}
        self._sessions = {k: v for k, v in self._sessions.items() if k in live}
        owners: dict[int, ReplicaKey] = {}
        for r in replicas:
            session_id = self._sessions.get(r.id)
            if session_id is None and r.handle is not None:
                session_id = self.executor.session_id(r.handle)
                if session_id is not None:
                    self._sessions[r.id] = session_id
            if session_id is not None:
                owners[session_id] = r.key
        return owners

    def _observe(self, view: _View, owners: Mapping[int, ReplicaKey], now: float) -> dict[str, MonitorReport]:
        reports: dict[str, MonitorReport] = {}
        for name, node in sorted(self.runtime.nodes.items()):
            cards = view.cards.get(name)
            if cards is None:
                continue
            allocations = [a for r in view.replicas if r.node == name
                           for a in allocations_for(r.key, r.placement.gpus, cards)]
            here = {r.key for r in view.replicas if r.node == name}  # session ids of other nodes mean nothing here
            node_owners = {session: key for session, key in owners.items() if key in here}
            try:
                sample = node.sample(now)
            except ExecutorError as exc:  # a remote node's agent does not answer: its executor logs that once
                log.debug("the GPUs of node %s were not sampled: %s", name, exc)
                continue
            except Exception:
                log.exception("sampling the GPUs of node %s failed; trying again next time", name)
                continue
            with self.runtime.lock:
                reports[name] = node.last_report = node.monitor.observe(sample, allocations, node_owners)
        return reports

    def _update_metrics(self, view: _View, reports: dict[str, MonitorReport], now: float) -> None:
        runtime, metrics = self.runtime, self.runtime.metrics
        for r in view.replicas:
            self._last_live[r.key.workload_id] = now
        self._last_live = {k: t for k, t in self._last_live.items() if now - t <= FORGET_ENDED_AFTER_S}
        snapshot = ClusterSnapshot(view.nodes)
        snapshot.assume_all([r.placement for r in view.replicas], force=True)  # skips capacity that is gone
        with runtime.lock:
            latest = [n.last_report for _, n in sorted(runtime.nodes.items()) if n.last_report is not None]
            metrics.update_gpus(latest, view.cards)
            for name, node in sorted(runtime.nodes.items()):
                metrics.update_idle(name, node.monitor.wasted(now))
            for name, report in sorted(reports.items()):
                metrics.record_overuse(name, report.overuse)
            metrics.forget_workloads(self._last_live)
            metrics.update_scheduler(snapshot, view.queue_depth)
            runtime.series.drop_stale(now, WORKLOAD_SERIES_KEEP_S)

