"""SimWorkload: one workload of a replayed trace, and its conversion to what the scheduler reads."""

from __future__ import annotations

from dataclasses import dataclass

from gpupool.domain.resources import ReplicaRequest
from gpupool.scheduler.types import PendingWorkload, ReplicaGroup, ReplicaPlacement
from gpupool.sim.traces.openb import TracePod


@dataclass(frozen=True, slots=True)
class SimWorkload:
    """A workload of a trace: when it arrives, how long it runs once started, where it queues, and what
    each of its `replicas` asks for (all replicas form one gang). `max_runtime_s` is what the user
    declared (None: nothing), which backfill uses; `duration_s` is how long it really runs."""

    name: str
    arrival_s: float
    duration_s: float
    request: ReplicaRequest
    queue: str = "default"
    priority: int = 0
    replicas: int = 1
    max_runtime_s: float | None = None
    preemptible: bool = True

    def pending(self, nominated: tuple[ReplicaPlacement, ...] | None = None) -> PendingWorkload:
        """The workload as the scheduler sees it while it waits."""
        return PendingWorkload(
            id=self.name, queue=self.queue, groups=(ReplicaGroup("worker", self.replicas, self.request),),
            priority=self.priority, submit_time=self.arrival_s, preemptible=self.preemptible,
            max_runtime_s=self.max_runtime_s, nominated=nominated,
        )

    @property
    def gpu_milli(self) -> int:
        """Nominal GPU milli of the whole workload."""
        return self.request.gpu.nominal_milli() * self.replicas


def from_openb(pods: list[TracePod], queue_by_qos: bool = True, exact_runtime: bool = False) -> list[SimWorkload]:
    """Workloads of an openb pod list: arrival = creation_time, duration = deletion - creation; the queue is
    the pod's qos class (or "default"); `exact_runtime` declares each true duration as its max_runtime.
    Pods without both times (the multigpu files have none) cannot be replayed and raise ValueError."""
    workloads = []
    for pod in pods:
        if pod.creation_time is None or pod.deletion_time is None:
            raise ValueError(f"pod {pod.name} has no creation_time/deletion_time; a replay needs both (the "
                             "multigpu variants carry no times: use the inflation experiment for them)")
        duration = max(pod.deletion_time - pod.creation_time, 1.0)
        workloads.append(SimWorkload(
            name=pod.name, arrival_s=pod.creation_time, duration_s=duration, request=pod.request(),
            queue=(pod.qos or "default") if queue_by_qos else "default",
            max_runtime_s=duration if exact_runtime else None,
        ))
    return workloads
