"""The reconciler: makes the executor match the store, and the store match what the executor reports.

Each step, with executor calls kept outside database transactions:
1. launch: start the replicas of scheduled workloads (start is idempotent, so a crash between starting and
   recording the handle is harmless), then scheduled -> starting;
2. stop: send stop to every live replica marked for stopping (again after the grace period if it still
   lives, e.g. after a server restart); replicas that never started are marked stopped;
3. poll: record each live replica's state and exit code, then advance its workload: starting -> running
   when every replica runs; succeeded when all exited with 0; on a failed or lost replica, stop the gang
   and either requeue it (a retry is left) or end it failed/lost; failed when it runs past max_runtime
   (counted from when it started, or while starting from when it began to start) or stays scheduled or
   starting longer than the start timeout; preempted -> pending (requeued, same id) once its replicas are
   gone. A replica of an active workload that ended stopped (nobody here asked: another server, a person
   with kill) counts as failed.

Locks are taken in one order everywhere: the workload row, then its replicas (as cancel does); the write
transaction of step 3 runs again when PostgreSQL picks it as a deadlock victim (`Database.transaction`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from gpupool.domain.errors import GpupoolError
from gpupool.domain.resources import parse_duration
from gpupool.domain.status import WorkloadStatus, transition
from gpupool.executors.base import Executor, ExecutorError, Handle, ReplicaLaunch, ReplicaStatus
from gpupool.server.services.workloads import request_stop
from gpupool.server.workers.launch import LaunchSettings, build_launches
from gpupool.store.db import Database
from gpupool.store.orm import TERMINAL_REPLICA_STATES, ReplicaRow, WorkloadRow
from gpupool.store.repos import workloads as repo

log = logging.getLogger("gpupool.reconciler")
STOP_RESEND_SLACK_S = 5.0
FOLLOW_UP_S = 0.05  # how soon to look again while replicas are starting or stopping
# Without a replica change, the write pass (time-based transitions: max_runtime, the start timeout, requeue
# after preemption) runs at most this often: 1 s delays those by at most a second, and spares the database a
# write transaction per 50 ms follow-up pass while replicas start (the writers' queue under load on SQLite).
FULL_PASS_EVERY_S = 1.0
DEFAULT_START_TIMEOUT_S = 600.0  # the command starts within milliseconds of its supervisor; 10 min is a hang
_S = WorkloadStatus


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

    def step(self) -> float | None:
        """One pass: launch, stop, poll and advance. Returns FOLLOW_UP_S while replicas are starting or
        stopping (the worker then looks again soon), else None."""
        changed = self.launch_scheduled()
        self.send_stops()
        changed = self.poll_and_advance() or changed
        if changed:
            self.on_change()
        return FOLLOW_UP_S if self._in_flux else None

    # ------------------------------------------------------------------------------------- launch
    def launch_scheduled(self) -> bool:
        """Start the replicas of every scheduled workload; True when any workload changed status."""
        with self.db.session(write=False) as session:
            plans = [self._plan(session, row) for row in repo.workloads_in(session, [_S.SCHEDULED.value])]
        if not plans:
            return False
        handles: dict[int, Handle] = {}
        errors: dict[int, str] = {}
        for plan in plans:
            for replica_id, launch in plan.launches:
                try:
                    handles[replica_id] = self.executor.start(launch)
                except ExecutorError as exc:
                    errors[replica_id] = str(exc)
        with self.db.session() as session:
            results = [self._record_launch(session, plan, handles, errors) for plan in plans]  # all, no short-cut
        return any(results)

    def _plan(self, session: Session, row: WorkloadRow) -> _LaunchPlan:
        replicas = repo.replicas_of(session, row.id, row.attempt)
        todo = {r.id for r in replicas if r.handle is None and r.stop_requested_at is None and r.state == "pending"}
        try:
            launches = build_launches(session, row, replicas, self.launch_settings)
        except GpupoolError as exc:
            return _LaunchPlan(row.id, row.attempt, [], f"cannot start: {exc}")
        ordered = sorted(replicas, key=lambda r: r.number)
        return _LaunchPlan(row.id, row.attempt, [(r.id, launch) for r, launch in zip(ordered, launches, strict=True)
                                                 if r.id in todo])

    def _record_launch(self, session: Session, plan: _LaunchPlan, handles: dict[int, Handle],
                       errors: dict[int, str]) -> bool:
        row = repo.workload_by_id(session, plan.workload_id, for_update=True)
        if row is None or row.attempt != plan.attempt:
            return False
        now = self.clock()
        replicas = repo.replicas_of(session, row.id, row.attempt)
        for replica in replicas:
            if replica.id in handles and replica.handle is None:
                replica.handle = handles[replica.id]
                replica.set_state("starting", now)
            elif replica.id in errors or (plan.error and replica.handle is None):
                replica.set_state("failed", now, errors.get(replica.id) or plan.error or "could not start")
                repo.add_event(session, row.id, now, f"replica {replica.number} could not start: "
                               f"{replica.message}", replica.number)
        if row.current_status != _S.SCHEDULED:
            request_stop(session, row, now)  # cancelled or preempted meanwhile
            return False
        if all(r.handle is not None for r in replicas):
            nodes = ", ".join(sorted({r.node for r in replicas}))
            transition(row, _S.STARTING, f"started {len(replicas)} replica(s) on {nodes}", now)
            return True
        return self._advance(session, row, now)

    # --------------------------------------------------------------------------------------- stop
    def send_stops(self) -> None:
        """Send stop to live replicas marked for stopping; mark never-started ones stopped."""
        now = self.clock()
        with self.db.session(write=False) as session:
            due = [(r.id, r.handle) for r in repo.live_replicas(session) if r.stop_requested_at is not None
                   and (r.handle is None or r.stop_sent_at is None
                        or now - r.stop_sent_at > self.stop_grace_s + STOP_RESEND_SLACK_S)]
        if not due:
            return
        for _, handle in due:
            if handle is not None:
                self.executor.stop(handle, self.stop_grace_s)
        with self.db.session() as session:
            for replica_id, handle in due:
                replica = session.get(ReplicaRow, replica_id)
                if replica is None:
                    continue
                if handle is None and replica.handle is None:
                    replica.set_state("stopped", now, "stopped before it started")
                else:
                    replica.stop_sent_at = now

    # ------------------------------------------------------------------------------- poll, advance
    def poll_and_advance(self) -> bool:
        """Poll every started live replica, record what changed, advance the workloads; True when any
        workload changed status or any replica ended (capacity was freed)."""
        with self.db.session(write=False) as session:
            replicas = repo.live_replicas(session)
            live = [(r.id, dict(r.handle)) for r in replicas if r.handle is not None]
            recorded = {r.id: (r.state, r.exit_code) for r in replicas}
        now = self.clock()
        recent_stop = self.stop_grace_s + STOP_RESEND_SLACK_S
        self._in_flux = any(r.state in ("pending", "starting") or (r.stop_requested_at is not None and (
            r.stop_sent_at is None or now - r.stop_sent_at <= recent_stop)) for r in replicas)
        statuses = {replica_id: self._poll(handle) for replica_id, handle in live}
        changed = any(status is not None and (status.state.value, status.exit_code) != recorded.get(replica_id)
                      for replica_id, status in statuses.items())
        if not changed and time.monotonic() - self._full_pass_at < FULL_PASS_EVERY_S:
            return False  # nothing to record: no write transaction (on SQLite it would queue every writer)
        self._full_pass_at = time.monotonic()

        def record_and_advance(session: Session) -> bool:
            rows = repo.workloads_in(session, [_S.SCHEDULED.value, _S.STARTING.value, _S.RUNNING.value,
                                               _S.PREEMPTED.value], for_update=True)  # workloads first
            ended = self._record_polls(session, statuses)  # then replicas
            now = self.clock()
            advanced = [self._advance(session, row, now) for row in rows]
            return ended or any(advanced)

        return self.db.transaction(record_and_advance)

    def _poll(self, handle: Handle) -> ReplicaStatus | None:
        try:
            return self.executor.poll(handle)
        except Exception:  # an executor bug must not stop the reconciler; the next pass polls again
            log.exception("polling a replica failed")
            return None

    def _record_polls(self, session: Session, statuses: dict[int, ReplicaStatus | None]) -> bool:
        ended = False
        now = self.clock()
        for replica_id, status in sorted(statuses.items()):
            replica = session.get(ReplicaRow, replica_id)
            if status is None or replica is None or replica.state in TERMINAL_REPLICA_STATES:
                continue
            if replica.state == status.state.value and replica.exit_code == status.exit_code:
                continue
            replica.set_state(status.state.value, now, status.message, status.exit_code)
            if status.state.is_terminal:
                ended = True
                repo.add_event(session, replica.workload_id, now,
                               f"replica {replica.number} ({replica.role}) {status.state.value}: "
                               f"{status.message or _exit_text(status.exit_code)}", replica.number)
        return ended

    def _advance(self, session: Session, row: WorkloadRow, now: float) -> bool:
        """Move one workload along from its replicas' states; True when its status changed."""
        status = row.current_status
        replicas = repo.replicas_of(session, row.id, row.attempt) if row.attempt else []
        live = [r for r in replicas if r.state not in TERMINAL_REPLICA_STATES]
        if status == _S.PREEMPTED:
            if live:
                return False
            transition(row, _S.PENDING, "requeued after preemption; waiting to be scheduled again", now)
            row.started_at = None
            return True
        if not status.is_active():
            return False
        failed = [r for r in replicas if r.state in ("failed", "lost", "stopped")]
        if failed:
            return self._handle_failure(session, row, failed, live, now)
        if replicas and all(r.state == "succeeded" for r in replicas):
            transition(row, _S.SUCCEEDED, f"all {len(replicas)} replica(s) exited with code 0", now)
            return True
        if status == _S.STARTING and replicas and all(r.state in ("running", "succeeded") for r in replicas):
            transition(row, _S.RUNNING, f"all {len(replicas)} replica(s) running", now)
            row.started_at = now
            return True
        return self._enforce_max_runtime(session, row, now)

    def _handle_failure(self, session: Session, row: WorkloadRow, failed: Sequence[ReplicaRow],
                        live: Sequence[ReplicaRow], now: float) -> bool:
        first = min(failed, key=lambda r: (r.ended_at or now, r.number))
        what = f"replica {first.number} ({first.role}) {first.state}: {first.message or _exit_text(first.exit_code)}"
        retries = int(row.spec.get("retries", 0))
        if row.retries_used < retries:
            request_stop(session, row, now)
            if live:
                return False  # requeue once the rest of the gang has stopped
            row.retries_used += 1
            transition(row, _S.PENDING, f"retry {row.retries_used} of {retries} after {what}", now)
            row.started_at = None
            return True
        final = _S.LOST if all(r.state == "lost" for r in failed) else _S.FAILED
        suffix = "; no retries left" if retries else ""
        transition(row, final, what + suffix, now)
        request_stop(session, row, now)
        return True

    def _enforce_max_runtime(self, session: Session, row: WorkloadRow, now: float) -> bool:
        starting = row.current_status in (_S.SCHEDULED, _S.STARTING)
        if starting and now - row.updated_at > self.start_timeout_s:
            transition(row, _S.FAILED, f"did not start within {self.start_timeout_s:g}s (the start timeout); "
                       "stopped", now)
            request_stop(session, row, now)
            return True
        limit = row.spec.get("max_runtime")
        started = row.started_at if row.started_at is not None else row.updated_at if starting else None
        if limit is None or started is None or now - started <= parse_duration(limit, "max_runtime"):
            return False
        transition(row, _S.FAILED, f"ran longer than its max_runtime ({limit}s); stopped", now)
        request_stop(session, row, now)
        return True


def _exit_text(code: int | None) -> str:
    return "no exit code" if code is None else f"exit code {code}"
