"""Lifecycles: what each kind of workload does with what its replicas report, in an explicit registry.

A lifecycle is pure: the reconciler hands it a `WorkloadView` (status, counters, the replicas of the
current run) and applies the `Step` it returns: a status change (through `gpupool.domain.status.transition`,
still the only door), stopping the replicas, counting a retry. The scheduler never sees lifecycles; it
places every kind the same way.

Only kinds whose behaviour is implemented and tested are registered (`LIFECYCLES`); `lifecycle_for` refuses
the others with a message naming the kinds that are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from gpupool.domain.errors import ValidationError
from gpupool.domain.replicas import ReplicaState
from gpupool.domain.status import StatusEvent, StatusHolder, WorkloadStatus, transition

_S = WorkloadStatus
_R = ReplicaState


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """What a lifecycle knows of one replica of the current run."""

    number: int
    role: str
    state: ReplicaState
    exit_code: int | None = None
    message: str = ""
    ended_at: float | None = None
    stop_requested: bool = False


@dataclass(frozen=True, slots=True)
class WorkloadView:
    """What a lifecycle knows of one workload: status, retry counters, when the run started, its replicas."""

    status: WorkloadStatus
    replicas: Sequence[ReplicaView]
    retries: int = 0
    retries_used: int = 0
    started_at: float | None = None
    max_runtime_s: int | None = None
    status_since: float | None = None  # when the workload entered its current status
    start_timeout_s: float | None = None  # the most a workload may stay scheduled or starting

    @property
    def live(self) -> list[ReplicaView]:
        """Replicas whose state is not terminal (they still hold resources)."""
        return [r for r in self.replicas if not r.state.is_terminal]


@dataclass(frozen=True, slots=True)
class Step:
    """What the reconciler does for one workload: change its status to `target` (None: keep it) with
    `reason`; `stop` asks every live replica to stop; `count_retry` uses one retry; `started` records now as
    the start of the run, `reset_start` forgets it (a requeue)."""

    target: WorkloadStatus | None = None
    reason: str = ""
    stop: bool = False
    count_retry: bool = False
    started: bool = False
    reset_start: bool = False


class Lifecycle(Protocol):
    """The behaviour of one kind of workload."""

    def advance(self, view: WorkloadView, now: float) -> Step | None:
        """What to do now given the replicas' states; None when nothing changes. Pure and deterministic."""
        ...


def exit_text(code: int | None) -> str:
    """'exit code N', or 'no exit code'."""
    return "no exit code" if code is None else f"exit code {code}"


def _requeue_after_preemption(view: WorkloadView) -> Step | None:
    if view.live:
        return None
    return Step(_S.PENDING, "requeued after preemption; waiting to be scheduled again", reset_start=True)


class JobLifecycle:
    """`kind: job`: runs to completion.

    starting -> running once every replica runs (or already succeeded); succeeded when every replica exited
    with 0; a replica that failed, was lost, or stopped without being asked stops the whole gang, which is
    then requeued (a retry is left, once the rest has stopped) or ends failed (lost when every failed
    replica was lost); failed when it stays scheduled or starting longer than the start timeout, or runs
    past max_runtime (counted from its start, or while starting from when it began to start); preempted ->
    pending once its replicas are gone.
    """

    def advance(self, view: WorkloadView, now: float) -> Step | None:
        """See the class docstring."""
        if view.status == _S.PREEMPTED:
            return _requeue_after_preemption(view)
        if not view.status.is_active():
            return None
        replicas = view.replicas
        failed = [r for r in replicas if r.state in (_R.FAILED, _R.LOST)
                  or (r.state == _R.STOPPED and not r.stop_requested)]
        if failed:
            return self._failure(view, failed, now)
        if replicas and all(r.state == _R.SUCCEEDED for r in replicas):
            return Step(_S.SUCCEEDED, f"all {len(replicas)} replica(s) exited with code 0")
        if view.status == _S.STARTING and replicas and all(r.state in (_R.RUNNING, _R.SUCCEEDED) for r in replicas):
            return Step(_S.RUNNING, f"all {len(replicas)} replica(s) running", started=True)
        return self._overdue(view, now)

    @staticmethod
    def _overdue(view: WorkloadView, now: float) -> Step | None:
        starting = view.status in (_S.SCHEDULED, _S.STARTING)
        if (starting and view.start_timeout_s is not None and view.status_since is not None
                and now - view.status_since > view.start_timeout_s):
            return Step(_S.FAILED, f"did not start within {view.start_timeout_s:g}s (the start timeout); stopped",
                        stop=True)
        limit = view.max_runtime_s
        started = view.started_at if view.started_at is not None else view.status_since if starting else None
        if limit is not None and started is not None and now - started > limit:
            return Step(_S.FAILED, f"ran longer than its max_runtime ({limit}s); stopped", stop=True)
        return None

    @staticmethod
    def _failure(view: WorkloadView, failed: Sequence[ReplicaView], now: float) -> Step:
        first = min(failed, key=lambda r: (r.ended_at or now, r.number))
        what = f"replica {first.number} ({first.role}) {first.state}: {first.message or exit_text(first.exit_code)}"
        if view.retries_used < view.retries:
            if view.live:
                return Step(stop=True)  # requeue once the rest of the gang has stopped
            return Step(_S.PENDING, f"retry {view.retries_used + 1} of {view.retries} after {what}",
                        count_retry=True, reset_start=True)
        final = _S.LOST if all(r.state == _R.LOST for r in failed) else _S.FAILED
        suffix = "; no retries left" if view.retries else ""
        return Step(final, what + suffix, stop=True)


class ControllerLifecycle:
    """A controller kind's own row (a sweep, a service, a job array): it has no replicas, so the reconciler has
    nothing to do for it; its controller (the sweep worker, the autoscaler, the array's tasks) changes its
    status with `set_controller_status` as its children progress."""

    def advance(self, view: WorkloadView, now: float) -> Step | None:
        """Always None: a controller's status is changed by its controller, not by replicas."""
        return None


def _pipeline_lifecycle() -> Lifecycle:
    from gpupool.domain.pipeline_runs import PipelineRunLifecycle  # noqa: PLC0415  (keeps this module light)

    return PipelineRunLifecycle()


class NotebookLifecycle:
    """`kind: notebook`: runs until stopped or culled, and can start again.

    As a job while it starts and runs (running once its replica runs; a failed or lost replica, the start
    timeout or max_runtime end it failed or lost; preempted -> pending once stopped). JupyterLab shutting down
    by itself with exit code 0 (File > Shut Down) stops the notebook (-> stopped), so `start` brings it back.
    A stopped notebook is left alone (its user's `start` requeues it; stopping or culling is a service's act).
    """

    def advance(self, view: WorkloadView, now: float) -> Step | None:
        """See the class docstring."""
        if view.status == _S.STOPPED:
            return None
        replicas = view.replicas
        if view.status.is_active() and replicas and all(r.state == _R.SUCCEEDED for r in replicas):
            return Step(_S.STOPPED, "JupyterLab shut down; `gpupool notebook start` starts it again",
                        reset_start=True)
        return JobLifecycle().advance(view, now)



LIFECYCLES: Mapping[str, Lifecycle] = MappingProxyType({
    "job": JobLifecycle(),
    "notebook": NotebookLifecycle(),
    "sweep": ControllerLifecycle(),
    "array": ControllerLifecycle(),
    "service": ControllerLifecycle(),
    "pipeline": _pipeline_lifecycle(),
})

# Kinds whose workload row is a controller: it owns child workloads (`workloads.parent_id`) and has no
# replicas of its own, so the scheduler never places it; its children are ordinary workloads in the queue.
CONTROLLER_KINDS: frozenset[str] = frozenset({"pipeline", "sweep", "service", "array"})


def lifecycle_for(kind: str) -> Lifecycle:
    """The registered lifecycle of `kind`; ValidationError naming the registered kinds otherwise."""
    found = LIFECYCLES.get(kind)
    if found is None:
        raise ValidationError(f"workloads of kind {kind!r} cannot run yet; kinds that can: "
                              f"{', '.join(sorted(LIFECYCLES))}", "kind")
    return found


class ControllerHolder(StatusHolder, Protocol):
    """A controller's own workload row: a status holder that also records when its current run started."""

    started_at: float | None


def set_controller_status(holder: ControllerHolder, target: WorkloadStatus, reason: str, now: float,
                          start_reason: str = "its first child workloads were submitted") -> list[StatusEvent]:
    """Move a controller's own row (a pipeline run, a sweep, a service: never placed itself) to `target`
    through the one door (`transition`), passing the statuses its life cycle requires; returns the events.

    - at `target` already, or ended: nothing changes ([]), so a level-triggered controller may call it every
      pass;
    - `pending` and `cancelled` are taken directly (a service whose last replica went is pending again);
    - any other target makes the controller run first: stopped or preempted go back to pending, pending goes
      to scheduled (reason `start_reason`), then running (`started_at` = now; reason `reason` when running is
      the target, else `start_reason`), then to `target` (e.g. succeeded) if it is not running.
    """
    current = holder.current_status
    if current == target or current.is_terminal():
        return []
    if target in (_S.PENDING, _S.CANCELLED):
        return [transition(holder, target, reason, now)]
    events = []
    if holder.current_status in (_S.STOPPED, _S.PREEMPTED):
        events.append(transition(holder, _S.PENDING, start_reason, now))
    if holder.current_status == _S.PENDING:
        events.append(transition(holder, _S.SCHEDULED, start_reason, now))
    if holder.current_status in (_S.SCHEDULED, _S.STARTING):
        events.append(transition(holder, _S.RUNNING, reason if target == _S.RUNNING else start_reason, now))
        holder.started_at = now
    if target != holder.current_status:
        events.append(transition(holder, target, reason, now))
    return events
