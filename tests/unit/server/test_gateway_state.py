"""The gateway's routing state: least in flight among ready replicas, draining, the bounded hold queue."""

from __future__ import annotations

from gpupool.domain.services import ServiceSpec
from gpupool.domain.specs import parse_spec
from gpupool.server.gateway import Backend, Gateway, ServiceView


def view(*backends: Backend, max_queue: int = 2) -> ServiceView:
    spec = parse_spec({"kind": "service", "name": "s", "command": "serve", "models": ["m"],
                       "scaling": {"max_queue": max_queue}})
    assert isinstance(spec, ServiceSpec)
    return ServiceView(1, "s", 10, spec, backends)


A, B = Backend(5, "127.0.0.1", 9001), Backend(7, "127.0.0.1", 9002)


def test_least_in_flight_with_ties_by_workload_id() -> None:
    gateway = Gateway()
    gateway.publish([view(B, A)])
    picks = [gateway.acquire(1) for _ in range(3)]
    assert picks == [A, B, A]  # 0/0 -> A (lower id); 1/0 -> B; 1/1 -> A
    gateway.release(1, A)
    gateway.release(1, A)
    assert gateway.acquire(1) == A and gateway.load({1: [5, 7]}) == {1: (2, 0)}  # A 1, B 1


def test_draining_replicas_get_no_new_requests_and_exclusions_retry_elsewhere() -> None:
    gateway = Gateway()
    gateway.publish([view(A, B)])
    gateway.drain(A.workload_id)
    assert gateway.acquire(1) == B and gateway.acquire(1) == B
    assert gateway.acquire(1, exclude=frozenset({B.workload_id})) is None
    assert gateway.acquire(2) is None  # an unknown service


def test_the_hold_queue_is_bounded_and_wakes_the_autoscaler() -> None:
    woken: list[bool] = []
    gateway = Gateway(wake_autoscaler=lambda: woken.append(True))
    gateway.publish([view(max_queue=2)])
    assert [gateway.hold(1), gateway.hold(1), gateway.hold(1)] == [True, True, False]
    assert gateway.load({1: []}) == {1: (0, 2)} and len(woken) == 2
    gateway.unhold(view(max_queue=2))
    assert gateway.load({1: []}) == {1: (0, 1)}
