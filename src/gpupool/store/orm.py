"""ORM classes: one per table. Times are seconds since the epoch (floats); amounts are integers (milli, MiB).

The workload status column is written in exactly one place, `WorkloadRow.record_status_event`, which only
`gpupool.domain.status.transition` calls; replica states likewise change only through `ReplicaRow.set_state`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, object_session, relationship

from gpupool.domain.replicas import TERMINAL_REPLICA_STATES as _TERMINAL
from gpupool.domain.replicas import ReplicaState, check_replica_transition
from gpupool.domain.status import StatusEvent, WorkloadStatus
from gpupool.store import event_log

NAME_LEN = 63


class Base(DeclarativeBase):
    """Declarative base of every table."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON, float: Double}


class UserRow(Base):
    """A person (or robot) that calls the API. `is_admin` users manage projects, queues, users and nodes."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float]


class ProjectRow(Base):
    """A team: workloads belong to a project, and each project has one queue of the same name."""

    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN), unique=True)
    created_at: Mapped[float]
    max_idle_timeout_s: Mapped[int | None]  # cap on its notebooks' idle_timeout; None: no cap


class MembershipRow(Base):
    """A user's role in a project: admin, member or viewer."""

    __tablename__ = "memberships"
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))


class TokenRow(Base):
    """An API token, stored as its SHA-256 (the token itself is shown once, at creation)."""

    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[float]
    last_used_at: Mapped[float | None]
    revoked_at: Mapped[float | None]


class QueueRow(Base):
    """A project's queue: guaranteed and limit amounts (limit None: no ceiling), weight, lending."""

    __tablename__ = "queues"
    name: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), unique=True)
    guaranteed_cpu_milli: Mapped[int] = mapped_column(BigInteger, default=0)
    guaranteed_memory_mib: Mapped[int] = mapped_column(BigInteger, default=0)
    guaranteed_gpu_milli: Mapped[int] = mapped_column(BigInteger, default=0)
    limit_cpu_milli: Mapped[int | None] = mapped_column(BigInteger)
    limit_memory_mib: Mapped[int | None] = mapped_column(BigInteger)
    limit_gpu_milli: Mapped[int | None] = mapped_column(BigInteger)
    weight: Mapped[float] = mapped_column(Double, default=1.0)
    lend: Mapped[bool] = mapped_column(Boolean, default=True)
    strict_fifo: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[float]


class NodeRow(Base):
    """A machine of the pool as registered: capacity, GPUs (a list of GPU dicts), labels and taints."""

    __tablename__ = "nodes"
    name: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    cpu_milli: Mapped[int] = mapped_column(BigInteger)
    memory_mib: Mapped[int] = mapped_column(BigInteger)
    gpus: Mapped[list[Any]] = mapped_column(JSON, default=list)
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    taints: Mapped[list[Any]] = mapped_column(JSON, default=list)
    schedulable: Mapped[bool] = mapped_column(Boolean, default=True)
    source: Mapped[str] = mapped_column(String(16))  # "local": registered by this server at start-up
    address: Mapped[str] = mapped_column(String(255), default="127.0.0.1")
    registered_at: Mapped[float]
    heartbeat_at: Mapped[float]
    # The GPU layer: what discovery found (GpuInventory.to_dict), which backend found it ("nvml", "fake" or ""
    # for none), whether its cards are simulated, and a counter bumped whenever `gpus` is recomputed (the
    # scheduling loop drops binds planned on an older version).
    # deferred: the largest column of the row, read only by the GPU views and the GPU admin; the scheduler, the
    # sampler and every submission's feasibility check load nodes without it (see repos.nodes.list_nodes)
    gpu_inventory: Mapped[dict[str, Any] | None] = mapped_column(JSON, deferred=True)
    gpu_backend: Mapped[str] = mapped_column(String(16), default="")
    gpu_simulated: Mapped[bool] = mapped_column(Boolean, default=False)
    gpus_version: Mapped[int] = mapped_column(Integer, default=0)


class GpuSettingRow(Base):
    """What an administrator (or the GPU monitor) decided for one GPU of a node: its sharing mode, the MIG
    layout applied, an unhealthy mark (sticky until an admin clears it), a MIG change in progress, and the
    last known state of its MPS control daemon."""

    __tablename__ = "gpu_settings"
    node: Mapped[str] = mapped_column(ForeignKey("nodes.name", ondelete="CASCADE"), primary_key=True)
    gpu_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    sharing_mode: Mapped[str] = mapped_column(String(16))
    mig_layout: Mapped[str | None] = mapped_column(Text)
    unhealthy_reason: Mapped[str | None] = mapped_column(Text)
    unhealthy_at: Mapped[float | None]
    reconfiguring: Mapped[bool] = mapped_column(Boolean, default=False)
    mps_state: Mapped[str | None] = mapped_column(String(16))
    mps_message: Mapped[str] = mapped_column(Text, default="")
    mps_pid: Mapped[int | None] = mapped_column(Integer)
    mps_checked_at: Mapped[float | None]
    updated_at: Mapped[float]


class WorkloadRow(Base):
    """A submitted workload: its spec (canonical dict), status, scheduling state and counters."""

    __tablename__ = "workloads"
    __table_args__ = (
        UniqueConstraint("user_id", "idempotency_key", name="uq_workloads_user_idempotency_key"),
        Index("ix_workloads_project_id_id", "project_id", "id"),
        Index("ix_workloads_status", "status"),
        Index("ix_workloads_parent_id", "parent_id"),
        UniqueConstraint("parent_id", "array_index", name="uq_workloads_parent_array_index"),
        # `ls` and the scheduler ask for workloads by status that are not array tasks (or are): with the index
        # in this one, 10,000 pending tasks are skipped in the index rather than read row by row
        Index("ix_workloads_status_array_index", "status", "array_index"),
        {"sqlite_autoincrement": True},
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN))
    kind: Mapped[str] = mapped_column(String(16))
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    queue: Mapped[str] = mapped_column(String(NAME_LEN))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=WorkloadStatus.PENDING.value)
    priority: Mapped[int] = mapped_column(Integer)
    replica_count: Mapped[int] = mapped_column(Integer)
    submitted_at: Mapped[float]
    updated_at: Mapped[float]
    started_at: Mapped[float | None]  # when the current run started (reset on requeue)
    finished_at: Mapped[float | None]
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # runs started so far
    retries_used: Mapped[int] = mapped_column(Integer, default=0)
    preemptions: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str] = mapped_column(Text, default="")  # the reason of the last status change
    pending_reason: Mapped[str | None] = mapped_column(Text)
    queue_position: Mapped[int | None] = mapped_column(Integer)
    nominated: Mapped[list[Any] | None] = mapped_column(JSON)
    # ids of the workloads that preempted this one for fair share: it never preempts them for fair share
    fair_share_preempted_by: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    rendezvous_ports: Mapped[list[Any] | None] = mapped_column(JSON)  # chosen per run for distributed jobs
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    # the controller workload (pipeline run, sweep, service) this one was created for; None for top-level ones
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("workloads.id"), default=None)
    # a task of a job array (its parent): the task's index, GPUPOOL_ARRAY_INDEX; None for other workloads
    array_index: Mapped[int | None] = mapped_column(Integer, default=None)

    events: Mapped[list[EventRow]] = relationship(back_populates="workload", order_by="EventRow.id",
                                                  cascade="all, delete-orphan", lazy="raise_on_sql")
    replicas: Mapped[list[ReplicaRow]] = relationship(back_populates="workload", order_by="ReplicaRow.id",
                                                      cascade="all, delete-orphan", lazy="raise_on_sql")

    @property
    def current_status(self) -> WorkloadStatus:
        """The status as a WorkloadStatus."""
        return WorkloadStatus(self.status)

    def record_status_event(self, event: StatusEvent) -> None:
        """Apply a change decided by `gpupool.domain.status.transition`: the only writer of `status`."""
        self.status = event.to_status.value
        self.message = event.reason
        self.updated_at = event.at
        if event.to_status.is_terminal():
            self.finished_at = event.at
        if event.to_status != WorkloadStatus.PENDING:
            self.pending_reason = None
            self.queue_position = None
        session = object_session(self)
        if session is None:
            raise RuntimeError("a status change was applied to a row that is not in a session")
        event_log.add(session, self.id, event.at, event.reason, from_status=event.from_status.value,
                      to_status=event.to_status.value)


class ReplicaRow(Base):
    """One replica of one run (attempt) of a workload: where it runs, its executor handle and state.

    `state` is a ReplicaState value ("pending" until the executor starts it). A replica holds its
    placement's resources until its state is terminal.
    """

    __tablename__ = "replicas"
    __table_args__ = (UniqueConstraint("workload_id", "attempt", "number", name="uq_replicas_workload_attempt"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workload_id: Mapped[int] = mapped_column(ForeignKey("workloads.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    number: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    ordinal: Mapped[int] = mapped_column(Integer)
    node: Mapped[str] = mapped_column(String(NAME_LEN))
    placement: Mapped[dict[str, Any]] = mapped_column(JSON)
    handle: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float]
    started_at: Mapped[float | None]
    ended_at: Mapped[float | None]
    stop_requested_at: Mapped[float | None]
    stop_sent_at: Mapped[float | None]
    # the ports the spec names -> {"port": chosen at bind time on the node; "host", "ready": set by the reconciler}
    endpoints: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    workload: Mapped[WorkloadRow] = relationship(back_populates="replicas", lazy="raise_on_sql")

    @property
    def current_state(self) -> ReplicaState:
        """The state as a ReplicaState."""
        return ReplicaState(self.state)

    def set_state(self, state: ReplicaState, at: float, message: str = "", exit_code: int | None = None) -> None:
        """Record what the executor reports for this replica (the only writer of `state`). InvalidTransitionError
        (nothing changed) when the replica life cycle (`gpupool.domain.replicas`) does not allow it."""
        check_replica_transition(self.current_state, state)
        self.state = state.value
        if message:
            self.message = message
        if exit_code is not None:
            self.exit_code = exit_code
        if state == ReplicaState.RUNNING and self.started_at is None:
            self.started_at = at
        if state.is_terminal and self.ended_at is None:
            self.ended_at = at


TERMINAL_REPLICA_STATES = frozenset(s.value for s in _TERMINAL)  # as stored in the `state` column


class EventRow(Base):
    """One entry of a workload's history: a status change, or something that happened to a replica."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workload_id: Mapped[int] = mapped_column(ForeignKey("workloads.id", ondelete="CASCADE"), index=True)
    at: Mapped[float]
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str | None] = mapped_column(String(16))
    replica: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)

    workload: Mapped[WorkloadRow] = relationship(back_populates="events", lazy="raise_on_sql")


class PipelineRow(Base):
    """A pipeline definition (`kind: pipeline`, submitted with `gpupool pipeline submit`), one per name and
    project; its runs are workloads of kind pipeline. `next_fire_at` is the next cron fire not yet handled
    (None without a schedule); `paused` stops its schedule."""

    __tablename__ = "pipelines"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_pipelines_project_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(NAME_LEN))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))  # who submitted it last; runs run as them
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float]
    updated_at: Mapped[float]
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    next_fire_at: Mapped[float | None]


class PipelineRunRow(Base):
    """What a pipeline run (a workload of kind pipeline) was started with: its pipeline, params, the
    schedule fire that started it (None for a manual run), the run it retries."""

    __tablename__ = "pipeline_runs"
    run_id: Mapped[int] = mapped_column(ForeignKey("workloads.id", ondelete="CASCADE"), primary_key=True)
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    fire_at: Mapped[float | None]
    retry_of: Mapped[int | None] = mapped_column(ForeignKey("workloads.id"))  # the run this one retries
    dir_run_id: Mapped[int | None] = mapped_column(Integer)  # whose run directory it uses (a retry: the first's)


class PipelineStepRow(Base):
    """One step of a pipeline run: its state, the child workload of its current generation (a retry of
    the run starts a new generation), why it is where it is, and the outputs it wrote."""

    __tablename__ = "pipeline_steps"
    __table_args__ = (UniqueConstraint("run_id", "step", name="uq_pipeline_steps_run_step"),
                      Index("ix_pipeline_steps_state", "state"))  # the worker looks for open steps every pass
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("workloads.id", ondelete="CASCADE"))
    step: Mapped[str] = mapped_column(String(NAME_LEN))
    state: Mapped[str] = mapped_column(String(16))
    generation: Mapped[int] = mapped_column(Integer, default=0)
    workload_id: Mapped[int | None] = mapped_column(ForeignKey("workloads.id"))
    reason: Mapped[str] = mapped_column(Text, default="")
    outputs: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    started_at: Mapped[float | None]
    finished_at: Mapped[float | None]

    def set_state(self, state: str, reason: str, finished_at: float | None = None) -> None:
        """The one writer of a step's state (decided by the pipeline worker's pure planner): the state, why,
        and when it finished (kept when None)."""
        self.state, self.reason = state, reason
        if finished_at is not None:
            self.finished_at = finished_at


class ScheduleFireRow(Base):
    """One cron fire of a pipeline's schedule, stored before its run is submitted: `outcome` is pending
    (decided, not yet acted on), ran (with `run_id`) or skipped (with the reason)."""

    __tablename__ = "schedule_fires"
    __table_args__ = (UniqueConstraint("pipeline_id", "fire_at", name="uq_schedule_fires_pipeline_fire"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"))
    fire_at: Mapped[float]
    recorded_at: Mapped[float]
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    run_id: Mapped[int | None] = mapped_column(ForeignKey("workloads.id", ondelete="SET NULL"))
class ServiceRevisionRow(Base):
    """One spec a service has had: revision 1 is the submitted one; `service update` and `rollback` add the
    next (a rollback copies an earlier spec into a new revision). The service row's spec is the newest."""

    __tablename__ = "service_revisions"
    __table_args__ = (UniqueConstraint("service_id", "revision", name="uq_service_revisions_service_revision"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("workloads.id", ondelete="CASCADE"), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float]
    reason: Mapped[str] = mapped_column(Text)
class NodeCordonRow(Base):
    """An administrator's cordon of a node: no new work is placed on it until it is lifted (a row of its own,
    so that node registration, which rewrites the nodes row, keeps it)."""

    __tablename__ = "node_cordons"
    node: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    by_user: Mapped[str] = mapped_column(String(NAME_LEN))
    since: Mapped[float]


class ServiceTokenRow(Base):
    """A service token: an application (not a user) that may call the gateway for one project's services and
    nothing else; stored as its SHA-256 like user tokens (the token itself is shown once, at creation)."""

    __tablename__ = "service_tokens"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_service_tokens_project_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_by: Mapped[str] = mapped_column(String(NAME_LEN))
    created_at: Mapped[float]
    revoked_at: Mapped[float | None]


class UsageLedgerRow(Base):
    """Busy, idle and observed GPU-seconds the sampler saw per (hour, project, user): the durable source of
    usage accounting's busy / idle hours (counters only ever added to; see store/repos/usage_ledger.py)."""

    __tablename__ = "usage_ledger"
    hour: Mapped[float] = mapped_column(Double, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    busy_s: Mapped[float] = mapped_column(Double, default=0.0)
    idle_s: Mapped[float] = mapped_column(Double, default=0.0)
    observed_s: Mapped[float] = mapped_column(Double, default=0.0)


class ServiceTrafficRow(Base):
    """Requests, errors (HTTP 5xx) and streamed chunks (about one per token) the gateway counted for a service
    in one minute: the durable per-minute series of the console's traffic chart (counters only ever added to,
    rows older than the retention deleted; see store/repos/service_traffic.py)."""

    __tablename__ = "service_traffic"
    service_id: Mapped[int] = mapped_column(ForeignKey("workloads.id", ondelete="CASCADE"), primary_key=True)
    minute: Mapped[float] = mapped_column(Double, primary_key=True, index=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)


class ChangeCounterRow(Base):
    """The store's change sequence (one row, id 1): every transaction that changes what the scheduling loop
    reads adds one to `seq` as its last statement before COMMIT (see store/changes.py)."""

    __tablename__ = "change_counter"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
