"""The reconciler: makes the executor match the store, and the store match what the executor reports.

Each step, with executor calls kept outside database transactions:
1. launch: start the replicas of scheduled workloads (start is idempotent, so a crash between starting and
   recording the handle is harmless), then scheduled -> starting;
2. stop: send stop to every live replica marked for stopping (again after the grace period if it still
   lives, e.g. after a server restart); replicas that never started are marked stopped;
3. probe: a running replica's endpoints (the ports its spec names) become ready once they accept
   connections (`gpupool.server.endpoints`);
4. poll: record each live replica's state and exit code, then advance each workload: its kind's lifecycle
   (`gpupool.domain.lifecycle`, e.g. a job: running, succeeded, retried, failed, failed past max_runtime or
   the start timeout) says what the replicas' states mean, and the reconciler applies the step it returns
   (status changes through `transition`).

Locks are taken in one order everywhere: the workload row, then its replicas (as cancel does); the write
transaction of step 4 runs again when PostgreSQL picks it as a deadlock victim (`Database.transaction`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from gpupool.domain.errors import GpupoolError, InvalidTransitionError
from gpupool.domain.lifecycle import ReplicaView, Step, WorkloadView, exit_text, lifecycle_for
from gpupool.domain.replicas import ReplicaState
from gpupool.domain.resources import parse_duration
from gpupool.domain.status import WorkloadStatus, transition
from gpupool.executors.base import (
    Endpoint,
    Executor,
    ExecutorError,
    Handle,
    NodeGoneError,
    ReplicaLaunch,
    ReplicaStatus,
)
from gpupool.server import endpoints as ep
from gpupool.server.services.workloads import request_stop
from gpupool.server.settings import DEFAULT_START_TIMEOUT_S
from gpupool.server.workers.launch import LaunchContext, LaunchSettings, build_launches, launch_context
from gpupool.store.db import Database
from gpupool.store.orm import NodeRow, ReplicaRow, WorkloadRow
from gpupool.store.repos import workloads as repo

log = logging.getLogger("gpupool.reconciler")
STOP_RESEND_SLACK_S = 5.0
FOLLOW_UP_S = 0.05  # how soon to look again while replicas are starting or stopping
# Without a replica change, the write pass (time-based transitions: max_runtime, the start timeout, requeue
# after preemption) runs at most this often: 1 s delays those by at most a second, and spares the database a
# write transaction per 50 ms follow-up pass while replicas start (the writers' queue under load on SQLite).
FULL_PASS_EVERY_S = 1.0
_S = WorkloadStatus
_R = ReplicaState


@dataclass
class _LaunchPlan:
    workload_id: int
    attempt: int
    launches: list[tuple[int, ReplicaLaunch]]  # (replica row id, launch)
    error: str | None = None


class Reconciler:
    """Drives replicas through the executor (see the module docstring); `step()` does one pass."""

    def __init__(self, db: Database, clock: Callable[[], float], executor: Executor, launch: LaunchSettings,
                 stop_grace_s: float = 10.0, on_change: Callable[[], None] = lambda: None,
                 start_timeout_s: float = DEFAULT_START_TIMEOUT_S) -> None:
        self.db = db
        self.start_timeout_s = start_timeout_s
        self.clock = clock
        self.executor = executor
        self.launch_settings = launch
        self.stop_grace_s = stop_grace_s
        self.on_change = on_change
        self._in_flux = False
        self._full_pass_at = float("-inf")
        self._gone_nodes: set[str] = set()  # nodes the executor found gone this pass (see hold_off_nodes)

    def step(self) -> float | None:
        """One pass: launch, stop, poll and advance. Returns FOLLOW_UP_S while replicas are starting or
        stopping (the worker then looks again soon), else None."""
        changed = self.launch_scheduled()
        with self.db.session(write=False) as session:  # one read of the live replicas for the three steps below
            live = repo.live_replicas(session)
        self.send_stops(live)
        self.probe_endpoints(live)
        changed = self.poll_and_advance(live) or changed
        if changed:
            self.on_change()
        return FOLLOW_UP_S if self._in_flux else None

    # ------------------------------------------------------------------------------------- launch
    def launch_scheduled(self) -> bool:
        """Start the replicas of every scheduled workload; True when any workload changed status."""
        with self.db.session(write=False) as session:
            scheduled = repo.workloads_in(session, [_S.SCHEDULED.value])
            runs = repo.current_replicas(session, scheduled)
            context = launch_context(session, scheduled, runs) if scheduled else None
            plans = [self._plan(session, row, runs[row.id], context) for row in scheduled]
        if not plans:
            return False
        handles: dict[int, Handle] = {}
        errors: dict[int, str] = {}
        reported: dict[int, dict[int, Endpoint]] = {}
        gone: set[int] = set()  # replicas whose node left the pool before they could start
        for plan in plans:
            for replica_id, launch in plan.launches:
                try:
                    handles[replica_id] = self.executor.start(launch)
                    reported[replica_id] = self.executor.endpoints(launch)
                except NodeGoneError as exc:
                    errors[replica_id] = str(exc)
                    gone.add(replica_id)
                except ExecutorError as exc:
                    errors[replica_id] = str(exc)
                    self._release_failed_start(launch)
                except Exception as exc:  # an executor's own fault: this replica fails, the others still start
                    log.exception("starting replica %s of workload %s failed", replica_id, plan.workload_id)
                    errors[replica_id] = f"the executor could not start it ({type(exc).__name__}: {exc})"
                    self._release_failed_start(launch)
        with self.db.session() as session:  # one transaction and two queries for all the launches of a pass
            rows = repo.workloads_by_ids(session, [plan.workload_id for plan in plans], for_update=True)
            runs = repo.current_replicas(session, list(rows.values()))  # workloads first, then their replicas
            results = [self._record_launch(session, plan, rows.get(plan.workload_id), runs, handles, errors,
                                           reported, gone) for plan in plans]  # all, no short-cut
        self.hold_off_nodes()
        return any(results)

    def _plan(self, session: Session, row: WorkloadRow, replicas: Sequence[ReplicaRow],
              context: LaunchContext | None) -> _LaunchPlan:
        todo = {r.id for r in replicas if r.handle is None and r.stop_requested_at is None and r.state == _R.PENDING}
        try:
            launches = build_launches(session, row, replicas, self.launch_settings, context)
        except GpupoolError as exc:
            return _LaunchPlan(row.id, row.attempt, [], f"cannot start: {exc}")
        ordered = sorted(replicas, key=lambda r: r.number)
        return _LaunchPlan(row.id, row.attempt, [(r.id, launch) for r, launch in zip(ordered, launches, strict=True)
                                                 if r.id in todo])

    def _record_launch(self, session: Session, plan: _LaunchPlan, row: WorkloadRow | None,
                       runs: dict[int, list[ReplicaRow]], handles: dict[int, Handle], errors: dict[int, str],
                       reported: dict[int, dict[int, Endpoint]], gone: set[int]) -> bool:
        """Record what the launch of `plan` did, on its workload `row` (locked) and the replicas of its current
        run (`runs`); True when the workload changed status."""
        if row is None or row.attempt != plan.attempt:
            return False
        now = self.clock()
        replicas = runs[row.id]
        for replica in replicas:
            if replica.current_state.is_terminal:  # ended meanwhile: its node left the pool during the start
                if replica.id in handles and replica.handle is None:
                    replica.handle = handles[replica.id]  # what was started there, on record
                continue
            if replica.id in handles and replica.handle is None:
                replica.handle = handles[replica.id]
                replica.set_state(_R.STARTING, now)
                if reported.get(replica.id):
                    replica.endpoints = ep.launched_endpoints(reported[replica.id])
            elif replica.id in gone:
                replica.stop_requested_at = now
                replica.set_state(_R.STOPPED, now, errors[replica.id])
            elif replica.id in errors or (plan.error and replica.handle is None):
                replica.set_state(_R.FAILED, now, errors.get(replica.id) or plan.error or "could not start")
                repo.add_event(session, row.id, now, f"replica {replica.number} could not start: "
                               f"{replica.message}", replica.number)
        if row.current_status != _S.SCHEDULED:
            request_stop(session, row, now)  # cancelled or preempted meanwhile
            return False
        lost_node = next((r for r in replicas if r.id in gone), None)
        if lost_node is not None:  # the pool's fault, not the workload's: place it again, no retry used
            self._gone_nodes.add(lost_node.node)  # and not on that node again
            request_stop(session, row, now)
            transition(row, _S.PENDING, f"node {lost_node.node} left the pool before replica {lost_node.number} "
                       "started; waiting to be placed again", now)
            return True
        if all(r.handle is not None for r in replicas):
            nodes = ", ".join(sorted({r.node for r in replicas}))
            transition(row, _S.STARTING, f"started {len(replicas)} replica(s) on {nodes}", now)
            return True
        return self._advance(session, row, now, replicas)

    # --------------------------------------------------------------------------------------- stop
    def send_stops(self, live: Sequence[ReplicaRow] | None = None) -> None:
        """Send stop to live replicas marked for stopping; mark never-started ones stopped. `live`: the live
        replicas as this pass read them (read here when not given)."""
        now = self.clock()
        live = self._live(live)
        rows = [r for r in live if r.stop_requested_at is not None
                and (r.handle is None or r.stop_sent_at is None
                     or now - r.stop_sent_at > self.stop_grace_s + STOP_RESEND_SLACK_S)]
        due = [(r.id, r.handle) for r in rows]
        # who the executor knows them as (its attempt counts from 0, the rows' from 1), for those never started
        unstarted = {r.id: (str(r.workload_id), r.number, r.attempt - 1, r.node) for r in rows if r.handle is None}
        if not due:
            return
        for replica_id, handle in due:
            if handle is not None:
                self.executor.stop(handle, self.stop_grace_s)
            else:  # a start that died before its handle was recorded may have left a process or a warm slot
                self._release_unstarted(unstarted[replica_id])
        with self.db.session() as session:
            for replica_id, handle in due:
                replica = session.get(ReplicaRow, replica_id)
                if replica is None:
                    continue
                if handle is None and replica.handle is None:
                    replica.set_state(_R.STOPPED, now, "stopped before it started")
                else:
                    replica.stop_sent_at = now

    def _release_failed_start(self, launch: ReplicaLaunch) -> None:
        """Release whatever a failed start may have left (a process spawned before its files could be written, a
        warm slot): the replica is recorded as failed, so no later stop would reach it. Nothing for a start that
        failed before it began anything."""
        try:
            self._release_unstarted((launch.workload_id, launch.replica, launch.attempt, launch.node))
        except Exception:  # the executor is at fault already; the failure is on record
            log.exception("could not release what the failed start of replica %s of workload %s left",
                          launch.replica, launch.workload_id)

    def _release_unstarted(self, replica: tuple[str, int, int, str]) -> None:
        workload_id, number, attempt, node = replica
        try:
            self.executor.release_unstarted(workload_id, number, attempt, grace_s=self.stop_grace_s, node=node)
        except (ExecutorError, OSError) as exc:  # the replica is stopped all the same; the slot waits for its reaping
            log.warning("could not release what the start of replica %s of workload %s left: %s", replica[1],
                        replica[0], exc)

    # -------------------------------------------------------------------------------------- probe
    def probe_endpoints(self, live: Sequence[ReplicaRow] | None = None) -> None:
        """Mark the endpoints of running replicas ready once they accept connections (probed outside any
        transaction); records an event per endpoint that became ready. `live` as for `send_stops`."""
        todo = [(r.id, e) for r in self._live(live) if r.state == _R.RUNNING
                for e in ep.stored_endpoints(r.endpoints) if not e.ready and e.host]
        ready: dict[int, set[int]] = {}
        for replica_id, endpoint in todo:
            if endpoint.host and ep.probe(endpoint.host, endpoint.port):
                ready.setdefault(replica_id, set()).add(endpoint.name)
        if not ready:
            return
        now = self.clock()
        with self.db.session() as session:
            for replica_id, names in sorted(ready.items()):
                replica = session.get(ReplicaRow, replica_id)
                if replica is None or replica.endpoints is None or replica.current_state.is_terminal:
                    continue
                replica.endpoints = ep.with_ready(replica.endpoints, names)
                repo.add_event(session, replica.workload_id, now, f"replica {replica.number} is ready on port(s) "
                               f"{', '.join(str(n) for n in sorted(names))}", replica.number)

    # ------------------------------------------------------------------------------- poll, advance
    def poll_and_advance(self, live_replicas: Sequence[ReplicaRow] | None = None) -> bool:
        """Poll every started live replica, record what changed, advance the workloads; True when any
        workload changed status or any replica ended (capacity was freed). `live_replicas` as for
        `send_stops`: what the pass's earlier steps wrote since is read again where it is recorded."""
        replicas = self._live(live_replicas)
        live = [(r.id, dict(r.handle)) for r in replicas if r.handle is not None]
        recorded = {r.id: (r.state, r.exit_code) for r in replicas}
        owners = {r.id: r.workload_id for r in replicas}
        now = self.clock()
        recent_stop = self.stop_grace_s + STOP_RESEND_SLACK_S
        self._in_flux = any(r.state in (_R.PENDING, _R.STARTING) or (r.stop_requested_at is not None and (
            r.stop_sent_at is None or now - r.stop_sent_at <= recent_stop)) for r in replicas)
        polled = {replica_id: self._poll(handle) for replica_id, handle in live}
        statuses = {replica_id: status for replica_id, status in polled.items()  # what differs from the read
                    if status is not None and (status.state.value, status.exit_code) != recorded.get(replica_id)}
        touched = {owners[replica_id] for replica_id in statuses}
        full = time.monotonic() - self._full_pass_at >= FULL_PASS_EVERY_S
        if not touched and not full:
            return False  # nothing to record: no write transaction (on SQLite it would queue every writer)
        if full:
            self._full_pass_at = time.monotonic()

        def record_and_advance(session: Session) -> bool:
            # between full passes only the workloads whose replicas changed can move: the others' replicas and
            # rows are as the last pass left them, and their time-based steps wait for the next full pass
            rows = repo.workloads_in(session, [_S.SCHEDULED.value, _S.STARTING.value, _S.RUNNING.value,
                                               _S.PREEMPTED.value], for_update=True,
                                     ids=None if full else touched)  # workloads first
            runs = repo.current_replicas(session, rows)  # then replicas: one query for all, not one per workload
            ended = self._record_polls(session, statuses, runs)
            now = self.clock()
            advanced = [self._advance(session, row, now, runs[row.id]) for row in rows]
            return ended or any(advanced)

        changed = self.db.transaction(record_and_advance)
        self.hold_off_nodes()
        return changed

    def _live(self, live: Sequence[ReplicaRow] | None) -> Sequence[ReplicaRow]:
        """`live`, or the live replicas read now (detached rows, read-only) when it is None."""
        if live is not None:
            return live
        with self.db.session(write=False) as session:
            return repo.live_replicas(session)

    def hold_off_nodes(self) -> None:
        """Make the nodes the executor found gone this pass unschedulable (see `hold_off_node`), in a
        transaction of their own, after the one that recorded the replicas: node rows are never locked
        while replica rows are held, as the node worker locks them in the other order."""
        if not self._gone_nodes:
            return
        gone, self._gone_nodes = sorted(self._gone_nodes), set()
        with self.db.session() as session:
            for name in gone:
                hold_off_node(session, name)

    def _poll(self, handle: Handle) -> ReplicaStatus | None:
        try:
            return self.executor.poll(handle)
        except ExecutorError as exc:  # the replica's node does not answer now: the executor logs that once
            log.debug("polling a replica: %s", exc)  # per episode; the next pass polls again
            return None
        except Exception:  # an executor bug must not stop the reconciler; the next pass polls again
            log.exception("polling a replica failed")
            return None

    def _record_polls(self, session: Session, statuses: dict[int, ReplicaStatus],
                      runs: dict[int, list[ReplicaRow]]) -> bool:
        """Record each polled status that differs from its replica's row: the rows of the current runs `runs`
        (read already), the others read in one query; True when a replica ended."""
        ended = False
        now = self.clock()
        replicas = {r.id: r for run in runs.values() for r in run if r.id in statuses}
        replicas.update(repo.replicas_by_ids(session, [i for i in statuses if i not in replicas]))
        for replica_id, status in sorted(statuses.items()):
            replica = replicas.get(replica_id)
            if replica is None or replica.current_state.is_terminal:
                continue
            if replica.state == status.state and replica.exit_code == status.exit_code:
                continue
            try:
                replica.set_state(status.state, now, status.message, status.exit_code)
            except InvalidTransitionError as exc:  # an executor reporting backwards; the next poll tells more
                log.warning("replica %s of workload %s: %s", replica.number, replica.workload_id, exc)
                continue
            if status.node_gone:
                self._gone_nodes.add(replica.node)  # its retry must not be placed there again
            if status.state.is_terminal:
                ended = True
                repo.add_event(session, replica.workload_id, now,
                               f"replica {replica.number} ({replica.role}) {status.state.value}: "
                               f"{status.message or exit_text(status.exit_code)}", replica.number)
        return ended

    def _advance(self, session: Session, row: WorkloadRow, now: float,
                 replicas: Sequence[ReplicaRow] | None = None) -> bool:
        """Move one workload along as its kind's lifecycle says (`replicas`: those of its current run, read
        here when not given); True when its status changed."""
        if replicas is None:
            replicas = repo.replicas_of(session, row.id, row.attempt) if row.attempt else []
        try:
            lifecycle = lifecycle_for(row.kind)
        except GpupoolError as exc:  # a kind this version cannot run: leave it, keep advancing the others
            log.error("workload %s: %s", row.id, exc)
            return False
        step = lifecycle.advance(_view(row, replicas, self.start_timeout_s), now)
        return self._apply(session, row, step, now, replicas) if step is not None else False

    @staticmethod
    def _apply(session: Session, row: WorkloadRow, step: Step, now: float, replicas: Sequence[ReplicaRow]) -> bool:
        if step.count_retry:
            row.retries_used += 1
        if step.target is not None:
            transition(row, step.target, step.reason, now)
        if step.started:
            row.started_at = now
        elif step.target is not None and step.target.is_terminal() and row.started_at is None:
            row.started_at = _start_of_ended_run(replicas, now)
        if step.reset_start:
            row.started_at = None
        if step.stop:
            request_stop(session, row, now)
        return step.target is not None


def hold_off_node(session: Session, name: str) -> None:
    """The executor found node `name` gone (a start refused, a replica lost with its node): make it
    unschedulable at once, so that the scheduler binds nothing more there in the time before the node worker's
    next pass removes it (or, should it answer again, makes it schedulable again, unless it is cordoned)."""
    node = session.get(NodeRow, name)
    if node is not None and node.schedulable:
        node.schedulable = False
        log.info("node %s is gone (its executor says so): no new work is placed on it", name)


def _start_of_ended_run(replicas: Sequence[ReplicaRow], ended_at: float) -> float | None:
    """When a run that ends without having been seen running started: a replica may start and end between two
    polls. The earliest start seen of a replica, else the end (`ended_at`) when some replica ran (it has an
    exit code); None when none ever started (a failed launch, a start timeout)."""
    seen = [r.started_at for r in replicas if r.started_at is not None]
    if seen:
        return min(seen)
    return ended_at if any(r.exit_code is not None for r in replicas) else None


def _view(row: WorkloadRow, replicas: Sequence[ReplicaRow], start_timeout_s: float | None = None) -> WorkloadView:
    """What the lifecycle sees of a workload (retries and max_runtime from its canonical spec)."""
    limit = row.spec.get("max_runtime")
    return WorkloadView(
        status=row.current_status, retries=int(row.spec.get("retries", 0)), retries_used=row.retries_used,
        started_at=row.started_at, status_since=row.updated_at, start_timeout_s=start_timeout_s,
        max_runtime_s=None if limit is None else int(parse_duration(limit, "max_runtime")),
        replicas=tuple(ReplicaView(r.number, r.role, r.current_state, r.exit_code, r.message, r.ended_at,
                                   r.stop_requested_at is not None) for r in replicas))
