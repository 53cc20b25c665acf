"""The service controller and autoscaler: one worker that keeps each service's replicas what its load needs.

Each pass (level-triggered: it reads the store and converges, so a restart mid-way is harmless):
1. read the live services and their live replica workloads (children, `workloads.parent_id`);
2. readiness: a replica whose port accepts connections (the reconciler's probe) is ready once its spec's
   readiness path answers 2xx; the gateway gets the new snapshot (`Gateway.publish`);
3. decide per service (`gpupool.domain.services.desired_replicas`): up at once when requests in flight or
   held need more replicas; down, after `scale_down_delay` of lower load, by draining a replica (no new
   requests; it is stopped once its requests finished); replicas not ready yet are stopped first;
4. act in one write transaction: submit replica workloads (ordinary queued workloads: quotas, sharing and
   preemption apply; idempotency keys `service-<id>-<n>` make a replayed submit harmless), stop drained
   replicas (cancelled through the one status door), stop the replicas of services that ended; each
   decision is an event of the service with its reason.

Draining: a replica chosen to go takes no new request and is stopped once its requests in flight finished,
or after `drain_timeout_s` (setting `service_drain_timeout_s`) with them still running. The same holds for a
replica the scheduler preempted: the scheduler marks it preempted without stopping it; this worker routes
nothing new to it and stops it once drained (its workload is then requeued like any preempted one). The
drain of a preempted replica counts from its status change, which is stored, so a restart bounds it too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx
from sqlalchemy.orm import Session

from gpupool.domain.errors import GpupoolError
from gpupool.domain.lifecycle import set_controller_status
from gpupool.domain.services import ScaleInput, ServiceSpec, child_name, child_spec, desired_replicas, wanted
from gpupool.domain.specs import parse_spec
from gpupool.domain.status import WorkloadStatus, transition
from gpupool.server.api import schemas
from gpupool.server.endpoints import stored_endpoints
from gpupool.server.gateway import Backend, Gateway, ServiceView
from gpupool.server.service_traffic import TrafficSeries
from gpupool.server.services.auth import principal_for
from gpupool.server.services.feasibility import FeasibilityCache
from gpupool.server.services.workloads import request_stop, submit
from gpupool.server.settings import DEFAULT_SERVICE_DRAIN_TIMEOUT_S
from gpupool.server.workers.loop import IntervalWorker
from gpupool.store.db import Database
from gpupool.store.repos import accounts
from gpupool.store.repos import services as services_repo
from gpupool.store.repos import workloads as repo

log = logging.getLogger("gpupool.autoscaler")
# A pass reads a few rows; every 0.5 s bounds how late a load change is seen without a wake-up (a held
# request wakes the worker at once). While replicas start or drain it looks again after 0.1 s, so a ready
# replica gets its held requests within about 0.1 s of answering its readiness path.
INTERVAL_S = 0.5
FOLLOW_UP_S = 0.1
# A readiness path answers at once when the server is up; 1 s leaves room for a loaded machine.
READINESS_TIMEOUT_S = 1.0
_PREEMPTED = WorkloadStatus.PREEMPTED.value


@dataclass(frozen=True, slots=True)
class Child:
    """One live replica workload of a service, as read from the store."""

    id: int
    name: str  # <service>-r<revision>: which revision it runs
    status: str
    reason: str
    endpoint: tuple[str, int] | None  # where it listens, once its port accepts connections
    started_at: float | None = None  # when it began to run
    status_since: float | None = None  # when its status last changed (for a preempted one: when it was)
    stop_requested: bool = False  # its replicas were asked to stop


@dataclass
class _Service:
    row_id: int
    name: str
    project_id: int
    user_id: int
    spec: ServiceSpec
    revision: int
    status: WorkloadStatus = WorkloadStatus.PENDING  # the controller row's own status
    children: list[Child] = field(default_factory=list)
    ready: set[int] = field(default_factory=set)  # children the gateway routes to


@dataclass
class _Plan:
    submit: dict[int, int] = field(default_factory=dict)  # service id -> replicas to add
    stop: dict[int, str] = field(default_factory=dict)  # child id -> reason
    release: dict[int, str] = field(default_factory=dict)  # preempted child id -> why it may stop now
    events: list[tuple[int, str]] = field(default_factory=list)  # (service id, reason)
    status: dict[int, tuple[WorkloadStatus, str]] = field(default_factory=dict)  # service id -> (status, reason)


class HttpReadiness:
    """The readiness probe: True when GET path answers 2xx within READINESS_TIMEOUT_S (blocks at most that
    long). One client for all probes: building one per probe costs tens of milliseconds (its TLS context)."""

    def __init__(self) -> None:
        self._client = httpx.Client(timeout=READINESS_TIMEOUT_S, trust_env=False)

    def __call__(self, host: str, port: int, path: str) -> bool:
        """See the class docstring."""
        try:
            return self._client.get(f"http://{host}:{port}{path}").is_success
        except httpx.HTTPError:
            return False


class Autoscaler:
    """See the module docstring; `step()` is one pass."""

    def __init__(self, db: Database, clock: Callable[[], float], gateway: Gateway, feasibility: FeasibilityCache,
                 on_change: Callable[[], None] = lambda: None,
                 probe: Callable[[str, int, str], bool] | None = None,
                 drain_timeout_s: float = DEFAULT_SERVICE_DRAIN_TIMEOUT_S) -> None:
        self.db = db
        self.clock = clock
        self.gateway = gateway
        self.feasibility = feasibility
        self.on_change = on_change
        self.probe = probe or HttpReadiness()
        self.drain_timeout_s = drain_timeout_s
        self._drain_started: dict[int, float] = {}  # child id -> when its drain began (scale-down, update)
        self._healthy: set[tuple[int, str, int]] = set()
        self._busy_at: dict[int, float] = {}
        self._last_event: dict[int, str] = {}
        self._submit_error: dict[int, str] = {}  # why the last replica could not be submitted, by service

    def step(self) -> float | None:
        """One pass (see the module docstring); FOLLOW_UP_S while replicas start, drain or requests wait."""
        services, orphans = self._read()
        views = [self._view(s) for s in services]
        live = {c.id for s in services for c in s.children}
        self._healthy = {k for k in self._healthy if k[0] in live}
        self.gateway.publish(views)
        now = self.clock()
        plan = _Plan(stop=dict.fromkeys(orphans, "its service ended"))
        for service, view in zip(services, views, strict=True):
            self._decide(service, now, plan)
            _plan_status(service, view, plan)
        plan.events = [(sid, reason) for sid, reason in plan.events if self._last_event.get(sid) != reason]
        self._drain_started = {k: v for k, v in self._drain_started.items() if k in self.gateway.draining()}
        if plan.submit or plan.stop or plan.release or plan.events or plan.status:
            self._apply(services, plan, now)
        self.gateway.traffic.flush_if_due(self.db)
        busy = any(not v.backends and self.gateway.load({v.id: []})[v.id][1] for v in views)
        changing = any(len(v.backends) != len(s.children) for v, s in zip(views, services, strict=True))
        return FOLLOW_UP_S if busy or changing or self.gateway.draining() or plan.submit else None

    # ------------------------------------------------------------------------------------- read
    def _read(self) -> tuple[list[_Service], list[int]]:
        with self.db.session(write=False) as session:
            rows = services_repo.live_services(session)
            children = services_repo.live_children(session)
            replicas = repo.current_replicas(session, children)
            revisions = services_repo.current_revisions(session, [row.id for row in rows])
        services: dict[int, _Service] = {}
        for row in rows:
            try:
                spec = parse_spec(row.spec)
            except GpupoolError as exc:  # a spec an older version stored; leave it, serve the others
                log.error("service %s: %s", row.id, exc)
                continue
            if isinstance(spec, ServiceSpec):
                services[row.id] = _Service(row.id, row.name, row.project_id, row.user_id, spec, revisions[row.id],
                                            row.current_status)
        orphans = []
        for child in children:
            owner = services.get(child.parent_id or 0)
            if owner is None:
                orphans.append(child.id)
                continue
            running = [r for r in replicas[child.id] if not r.current_state.is_terminal]
            found = [e for r in running for e in stored_endpoints(r.endpoints) if e.ready and e.host]
            endpoint = (found[0].host or "", found[0].port) if found else None
            owner.children.append(Child(child.id, child.name, child.status, child.pending_reason or child.message,
                                        endpoint, child.started_at, child.updated_at,
                                        any(r.stop_requested_at is not None for r in running)))
        return list(services.values()), orphans

    def _view(self, service: _Service) -> ServiceView:
        backends = []
        for child in service.children:
            if child.endpoint is None or child.status == _PREEMPTED:  # a preempted replica gets no new request
                continue
            key = (child.id, *child.endpoint)
            if key not in self._healthy and self.probe(child.endpoint[0], child.endpoint[1],
                                                       service.spec.readiness_path):
                self._healthy.add(key)
            if key in self._healthy:
                backends.append(Backend(child.id, *child.endpoint))
                service.ready.add(child.id)
        reason = _waiting_reason(service.children, backends)
        if not service.children and self._submit_error.get(service.row_id):
            reason = self._submit_error[service.row_id]
        return ServiceView(service.row_id, service.name, service.project_id, service.spec, tuple(backends), reason)

    # ----------------------------------------------------------------------------------- decide
    def _decide(self, service: _Service, now: float, plan: _Plan) -> None:
        draining = self.gateway.draining()
        for child in service.children:
            if child.status == _PREEMPTED:
                self._drain_preempted(child, now, plan)
            elif child.id in draining:
                self._drain_retired(child, now, plan)
        name = child_name(service.name, service.revision)
        limit = service.spec.readiness_timeout_s
        for child in service.children:
            if child.status == _PREEMPTED:
                continue
            if child.started_at is not None and child.id not in service.ready and now - child.started_at > limit:
                plan.stop[child.id] = f"replica workload {child.id} not ready within {limit}s (readiness timeout)"
        # a preempted replica counts: once drained and stopped it is requeued and comes back by itself
        live = [c for c in service.children if (c.id not in draining or c.status == _PREEMPTED) and c.name == name
                and c.id not in plan.stop]
        old = [c for c in service.children if c.id not in draining and c.name != name]
        inflight, held = self.gateway.load({service.row_id: [c.id for c in service.children]})[service.row_id]
        busy_at = self._busy_at.setdefault(service.row_id, now)
        if wanted(service.spec, inflight, held) >= len(live) + len(old):
            busy_at = self._busy_at[service.row_id] = now
        desired, reason = desired_replicas(service.spec, ScaleInput(inflight, held, len(live), busy_at, now))
        if old:  # a rolling update: as many new replicas as old ones, then the old ones drain
            desired = max(desired, min(len(old), service.spec.max_replicas))
            if sum(c.id in service.ready for c in live) >= desired:
                reason = f"revision {service.revision} ready on {desired} replica(s): old replicas drain"
                self._retire(old, reason, plan)
            else:
                reason = f"rolling out revision {service.revision}: {len(live)} of {desired} new replica(s)"
        if desired > len(live):
            plan.submit[service.row_id] = desired - len(live)
        elif desired < len(live):
            self._busy_at[service.row_id] = now  # the next step down waits a whole delay again
            victims = sorted(live, key=lambda c: (c.id in service.ready, self.gateway.inflight_of(c.id), -c.id))
            self._retire(victims[:len(live) - desired], reason, plan)
        if reason:
            plan.events.append((service.row_id, reason))

    def _drain_retired(self, child: Child, now: float, plan: _Plan) -> None:
        """A replica draining after a scale-down or an update stops once idle or after the drain timeout."""
        left = self.gateway.inflight_of(child.id)
        began = self._drain_started.setdefault(child.id, now)
        if left == 0:
            plan.stop[child.id] = "drained"
        elif now - began >= self.drain_timeout_s:
            plan.stop[child.id] = f"{left} request(s) still in flight after {self.drain_timeout_s:g}s (drain timeout)"

    def _drain_preempted(self, child: Child, now: float, plan: _Plan) -> None:
        """A preempted replica takes no new request; its replicas are asked to stop once its requests in flight
        finished or the drain timeout (counted from the preemption) passed."""
        if child.stop_requested:
            return
        self.gateway.drain(child.id)
        left = self.gateway.inflight_of(child.id)
        waited = now - (child.status_since if child.status_since is not None else now)
        if left == 0:
            plan.release[child.id] = "drained after preemption"
        elif waited >= self.drain_timeout_s:
            plan.release[child.id] = (f"preempted; {left} request(s) still in flight after "
                                      f"{self.drain_timeout_s:g}s (drain timeout)")

    def _retire(self, children: Sequence[Child], reason: str, plan: _Plan) -> None:
        """Stop replicas that take no requests now; drain the others (stopped once their requests finished)."""
        for child in children:
            if child.endpoint is None or self.gateway.inflight_of(child.id) == 0:
                plan.stop[child.id] = reason
            else:
                self.gateway.drain(child.id)

    # ------------------------------------------------------------------------------------ apply
    def _apply(self, services: Sequence[_Service], plan: _Plan, now: float) -> None:
        by_id = {s.row_id: s for s in services}
        with self.db.session() as session:
            for service_id, reason in plan.events:  # only reasons that changed since the last one recorded
                repo.add_event(session, service_id, now, reason)
                self._last_event[service_id] = reason
            for service_id, count in sorted(plan.submit.items()):
                self._submit(session, by_id[service_id], count, now)
            for child_id, reason in sorted(plan.stop.items()):
                self._stop(session, child_id, reason, now)
            for child_id, reason in sorted(plan.release.items()):
                self._release(session, child_id, reason, now)
            for service_id, (status, reason) in sorted(plan.status.items()):
                row = repo.workload_by_id(session, service_id, for_update=True)
                if row is not None:
                    set_controller_status(row, status, reason, now, start_reason="a replica answers its readiness "
                                          "path")
        self.on_change()

    def _submit(self, session: Session, service: _Service, count: int, now: float) -> None:
        user = accounts.user_by_id(session, service.user_id)
        if user is None:
            return
        principal = principal_for(session, user)
        first = services_repo.children_count(session, service.row_id)
        for n in range(first + 1, first + count + 1):
            body = schemas.SubmitRequest(spec=child_spec(service.spec, service.revision),
                                         idempotency_key=f"service-{service.row_id}-{n}")
            try:
                with session.begin_nested():
                    row, _ = submit(session, principal, body, now, self.feasibility, parent_id=service.row_id)
            except GpupoolError as exc:
                reason = self._submit_error[service.row_id] = f"cannot start a replica: {exc.message}"
                if self._last_event.get(service.row_id) != reason:
                    repo.add_event(session, service.row_id, now, reason)
                    self._last_event[service.row_id] = reason
                return
            self._submit_error.pop(service.row_id, None)
            repo.add_event(session, service.row_id, now, f"replica workload {row.id} submitted")

    @staticmethod
    def _stop(session: Session, child_id: int, reason: str, now: float) -> None:
        row = repo.workload_by_id(session, child_id, for_update=True)
        if row is None or row.current_status.is_terminal():
            return
        transition(row, WorkloadStatus.CANCELLED, f"stopped by its service: {reason}", now)
        request_stop(session, row, now)
        if row.parent_id is not None:
            repo.add_event(session, row.parent_id, now, f"replica workload {row.id} stopped: {reason}")


    @staticmethod
    def _release(session: Session, child_id: int, reason: str, now: float) -> None:
        """Ask the replicas of a drained preempted replica workload to stop (it stays preempted, then is
        requeued by the reconciler like any preempted workload)."""
        row = repo.workload_by_id(session, child_id, for_update=True)
        if row is None or row.current_status != _PREEMPTED or not request_stop(session, row, now):
            return
        repo.add_event(session, row.id, now, f"stopping: {reason}")
        if row.parent_id is not None:
            repo.add_event(session, row.parent_id, now, f"replica workload {row.id} stopping: {reason}")


def start_gateway(db: Database, clock: Callable[[], float], feasibility: FeasibilityCache,
                  on_change: Callable[[], None], run: bool = True,
                  drain_timeout_s: float = DEFAULT_SERVICE_DRAIN_TIMEOUT_S) -> tuple[Gateway, IntervalWorker]:
    """The gateway's state and its autoscaler worker (started unless `run` is False); stop the worker at
    shutdown. `drain_timeout_s` bounds how long a replica that goes waits for its requests in flight."""
    gateway = Gateway(traffic=TrafficSeries(clock))
    scaler = Autoscaler(db, clock, gateway, feasibility, on_change, drain_timeout_s=drain_timeout_s)
    worker = IntervalWorker("autoscaler", scaler.step, INTERVAL_S)
    gateway.wake_autoscaler = worker.wake
    if run:
        worker.start()
    return gateway, worker


def _plan_status(service: _Service, view: ServiceView, plan: _Plan) -> None:
    """The service's own status: running while a replica serves, pending (with why) while none does."""
    if view.backends:
        target, reason = WorkloadStatus.RUNNING, f"{len(view.backends)} replica(s) serving"
    elif not service.children:
        target, reason = WorkloadStatus.PENDING, "scaled to zero: the next request starts a replica"
    else:
        target, reason = WorkloadStatus.PENDING, f"no replica serving: {view.waiting_reason}"
    if target != service.status:
        plan.status[service.row_id] = (target, reason)


def _waiting_reason(children: Sequence[Child], backends: Sequence[Backend]) -> str:
    if backends:
        return ""
    if not children:
        return "no replica has been started yet"
    first = children[0]
    if first.status == WorkloadStatus.PENDING.value:
        return f"replica workload {first.id} is pending: {first.reason or 'waiting to be scheduled'}"
    return f"replica workload {first.id} is {first.status} and not ready yet"
