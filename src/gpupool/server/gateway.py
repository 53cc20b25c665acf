"""The gateway's routing state: which services exist, which of their replicas are ready, what is in flight.

The autoscaler worker (`gpupool.server.workers.autoscaler`) reads the store, probes readiness and
`publish`es a snapshot; the gateway routes (`gpupool.server.api.routes.gateway`) pick a replica with
`acquire` (least in flight among ready, not draining replicas; ties by workload id) and `release` it when
the response ends. A request that finds no ready replica is held (`hold`): counted in the service's load so
the autoscaler starts a replica, and bounded by the service's `max_queue`. Shared by the event loop and the
worker thread under one lock; nothing here blocks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gpupool.domain.services import ServiceSpec
from gpupool.server.service_traffic import TrafficSeries


@dataclass(frozen=True, slots=True)
class Backend:
    """A ready replica: its child workload and where it listens."""

    workload_id: int
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class ServiceView:
    """One service as the gateway routes to it: the controller workload, its spec, its ready replicas and,
    while none is ready, why (the pending reason of its first replica)."""

    id: int
    name: str
    project_id: int
    spec: ServiceSpec
    backends: tuple[Backend, ...] = ()
    waiting_reason: str = ""


# Latency buckets (seconds): a first byte from a warm small model takes milliseconds, a cold start tens of
# seconds; these span 5 ms to 10 minutes (the default cold-start timeout) roughly doubling.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class GatewayMetrics:
    """Per-service request and streamed-chunk counts, in-flight and held gauges, latency histograms. A service
    is labelled by its project's id and its name: two projects may each have a service of one name, and
    neither may see the other's traffic (the console reads these counts for a project's members)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        key = ["project_id", "service"]
        self.requests = Counter("gpupool_service_requests", "Requests through the gateway by service and HTTP "
                                "status", [*key, "code"], registry=self.registry)
        self.chunks = Counter("gpupool_service_stream_chunks", "Response body chunks streamed (about one per "
                              "token for SSE)", key, registry=self.registry)
        self.inflight = Gauge("gpupool_service_inflight", "Requests in flight", key, registry=self.registry)
        self.held = Gauge("gpupool_service_held", "Requests held for a replica", key, registry=self.registry)
        self.first_byte = Histogram("gpupool_service_time_to_first_byte_seconds", "Arrival to the first byte "
                                    "sent", key, buckets=_BUCKETS, registry=self.registry)
        self.total = Histogram("gpupool_service_request_seconds", "Arrival to the last byte sent", key,
                               buckets=_BUCKETS, registry=self.registry)


def metric_key(view: ServiceView) -> tuple[str, str]:
    """The labels of a service in GatewayMetrics: its project's id and its name."""
    return str(view.project_id), view.name


@dataclass
class Gateway:
    """See the module docstring."""

    wake_autoscaler: Callable[[], None] = lambda: None
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    traffic: TrafficSeries = field(default_factory=lambda: TrafficSeries(time.time))  # durable, per minute
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _services: dict[int, ServiceView] = field(default_factory=dict)
    _inflight: dict[int, int] = field(default_factory=dict)  # by child workload id
    _held: dict[int, int] = field(default_factory=dict)  # by service id
    _draining: set[int] = field(default_factory=set)  # child workload ids taking no new requests
    generation: int = 0  # how many snapshots were published (a waiter knows when a new pass has run)

    def publish(self, views: Iterable[ServiceView]) -> None:
        """Replace the snapshot of services (the autoscaler, after each pass)."""
        with self._lock:
            self.generation += 1
            self._services = {v.id: v for v in views}
            live = {b.workload_id for v in self._services.values() for b in v.backends}
            self._draining &= live | set(self._inflight)

    def services(self) -> list[ServiceView]:
        """Every published service, by id."""
        with self._lock:
            return [self._services[k] for k in sorted(self._services)]

    def service(self, service_id: int) -> ServiceView | None:
        """The published view of one service, or None once it is gone."""
        with self._lock:
            return self._services.get(service_id)

    def acquire(self, service_id: int, exclude: frozenset[int] = frozenset()) -> Backend | None:
        """The ready, not draining replica with the fewest requests in flight (not in `exclude`), counted in
        flight; None when there is none."""
        with self._lock:
            view = self._services.get(service_id)
            if view is None:
                return None
            candidates = [b for b in view.backends if b.workload_id not in self._draining | exclude]
            if not candidates:
                return None
            best = min(candidates, key=lambda b: (self._inflight.get(b.workload_id, 0), b.workload_id))
            self._inflight[best.workload_id] = self._inflight.get(best.workload_id, 0) + 1
            self.metrics.inflight.labels(*metric_key(view)).inc()
            return best

    def release(self, service_id: int, backend: Backend) -> None:
        """The request on `backend` ended."""
        with self._lock:
            left = self._inflight.get(backend.workload_id, 0) - 1
            if left > 0:
                self._inflight[backend.workload_id] = left
            else:
                self._inflight.pop(backend.workload_id, None)
            view = self._services.get(service_id)
        if view is not None:
            self.metrics.inflight.labels(*metric_key(view)).dec()

    def hold(self, service_id: int) -> bool:
        """Count one more held request unless the service's queue is full (False); wakes the autoscaler."""
        with self._lock:
            view = self._services.get(service_id)
            held = self._held.get(service_id, 0)
            if view is None or held >= view.spec.scaling.max_queue:
                return False
            self._held[service_id] = held + 1
        self.metrics.held.labels(*metric_key(view)).inc()
        self.wake_autoscaler()
        return True

    def unhold(self, view: ServiceView) -> None:
        """A held request of service `view` got a replica or gave up."""
        with self._lock:
            self._held[view.id] = max(0, self._held.get(view.id, 0) - 1)
        self.metrics.held.labels(*metric_key(view)).dec()

    def load(self, children: Mapping[int, Iterable[int]]) -> dict[int, tuple[int, int]]:
        """(in flight, held) per service id, given each service's child workload ids."""
        with self._lock:
            return {sid: (sum(self._inflight.get(w, 0) for w in kids), self._held.get(sid, 0))
                    for sid, kids in children.items()}

    def inflight_of(self, workload_id: int) -> int:
        """Requests in flight on one replica."""
        with self._lock:
            return self._inflight.get(workload_id, 0)

    def drain(self, workload_id: int) -> None:
        """Send no new request to this replica (those in flight finish)."""
        with self._lock:
            self._draining.add(workload_id)

    def draining(self) -> frozenset[int]:
        """The replicas being drained."""
        with self._lock:
            return frozenset(self._draining)
