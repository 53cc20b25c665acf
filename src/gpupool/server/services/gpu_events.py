"""What the GPU sampler records in the store from each monitor report:

- over-use: an event on the workload ("replica 0 uses 14336 MiB on GPU 0, more than the 10240 MiB it asked
  for"); with the kill policy the workload fails with that reason and its replicas are stopped;
- idle allocations: an event on the workload (a wasted GPU), once per idle episode;
- GPU errors: an XID or ECC error that marks a card unhealthy is stored (sticky until an admin clears it:
  the scheduler places nothing new there) and told to the workloads on the card; application-caused XIDs
  are only told.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from gpupool.domain.status import WorkloadStatus, transition
from gpupool.gpu.monitor import HealthEvent, MonitorReport, OveruseEvent
from gpupool.server.services import gpus
from gpupool.server.services.workloads import request_stop
from gpupool.store.repos import workloads as repo


def record_report(session: Session, report: MonitorReport, now: float) -> bool:
    """Record one report's events; True when a workload was stopped (the reconciler should look soon)."""
    for health in report.health:  # node rows first, workload rows after: the scheduler's lock order
        _record_health(session, report.node, health, now)
    stopped = False
    for event in report.overuse:
        stopped = _record_overuse(session, event, now) or stopped
    for idle in report.newly_idle:
        workload_id = _workload_id(idle.replica.workload_id)
        if workload_id is not None and repo.workload_by_id(session, workload_id) is not None:
            repo.add_event(session, workload_id, now, f"wasted GPU on {report.node}: {idle.message}",
                           idle.replica.replica)
    return stopped


def _workload_id(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _record_overuse(session: Session, event: OveruseEvent, now: float) -> bool:
    workload_id = _workload_id(event.replica.workload_id)
    row = repo.workload_by_id(session, workload_id, for_update=True) if workload_id is not None else None
    if row is None:
        return False
    if not event.kill or not row.current_status.is_active():
        repo.add_event(session, row.id, now, f"GPU memory over-use: {event.message}", event.replica.replica)
        return False
    transition(row, WorkloadStatus.FAILED, f"GPU memory over-use: {event.message}", now)
    request_stop(session, row, now)
    return True


def _record_health(session: Session, node: str, event: HealthEvent, now: float) -> None:
    if event.marks_unhealthy:
        if not gpus.mark_unhealthy(session, node, event.gpu_index, event.reason, now):
            return
        message = (f"GPU {event.gpu_index} of {node} marked unhealthy ({event.reason}); nothing new is placed "
                   "on it until an administrator clears it")
    else:
        message = f"GPU {event.gpu_index} of {node} reported {event.reason}"
    for replica in repo.live_replicas(session):
        if replica.node == node and any(int(g["index"]) == event.gpu_index for g in replica.placement.get("gpus", [])):
            repo.add_event(session, replica.workload_id, now, message, replica.number)
