"""API types: the JSON bodies of /api/v1, shared by the server, the HTTP client, the SDK and the CLI.

Only pydantic here (no server imports), so the client can use these types without loading the server.
Amounts are exact integers: CPU in milli-cores, memory in MiB, GPU in milli-GPU (1000 = one card).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_SPEC_CHARS = 1_048_576
KEY_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
NAME_PATTERN = r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$"
MAX_ID = 2**31 - 1  # ids are 32-bit integers in the database


class Model(BaseModel):
    """Base: unknown fields are refused, so a typo in a request is an error rather than ignored."""

    model_config = ConfigDict(extra="forbid", defer_build=True)  # built on first use: a CLI command needs few


class ErrorDetail(Model):
    """What went wrong: a machine-readable `type`, a message a person can act on, and the field if known."""

    type: str
    message: str
    field: str | None = None


class ErrorBody(Model):
    """Every 4xx/5xx response body."""

    error: ErrorDetail


class Health(Model):
    """GET /healthz."""

    status: str
    version: str


class Resources(Model):
    """An amount of CPU (milli-cores), memory (MiB) and GPU (milli-GPU)."""

    cpu_milli: int = 0
    memory_mib: int = 0
    gpu_milli: int = 0


class ResourceLimit(Model):
    """A per-resource ceiling; None means no ceiling for that resource."""

    cpu_milli: int | None = None
    memory_mib: int | None = None
    gpu_milli: int | None = None


# ------------------------------------------------------------------------------------ accounts
class Membership(Model):
    """A user's role in a project."""

    project: str
    role: str


class User(Model):
    """A user and the projects they belong to."""

    id: int
    name: str
    is_admin: bool
    created_at: float
    projects: list[Membership] = []


class UserCreate(Model):
    """POST /users: a new user, optionally added to a project; the response holds their first token."""

    name: str = Field(pattern=NAME_PATTERN, max_length=63)
    admin: bool = False
    project: str | None = Field(None, pattern=NAME_PATTERN, max_length=63)
    role: str = Field("member", max_length=16)


class Token(Model):
    """An API token's metadata (the token itself is shown only when created)."""

    id: int
    name: str
    user: str
    prefix: str
    created_at: float
    last_used_at: float | None = None
    revoked: bool = False


class TokenCreate(Model):
    """POST /tokens: a token for yourself, or (administrators) for `user`."""

    name: str = Field("cli", pattern=NAME_PATTERN, max_length=63)
    user: str | None = Field(None, pattern=NAME_PATTERN, max_length=63)


class TokenCreated(Model):
    """A new token: `token` is shown this once; store it now."""

    token: str
    info: Token


class ServiceToken(Model):
    """A service token's metadata: it may call the gateway for its project's services, nothing else."""

    id: int
    name: str
    project: str
    prefix: str
    created_by: str
    created_at: float
    revoked: bool = False


class ServiceTokenCreated(Model):
    """A new service token: `token` is shown this once; store it now."""

    token: str
    info: ServiceToken


class ServiceTokenCreate(Model):
    """The name of a new service token (unique in its project), e.g. the application's."""

    name: str = Field(pattern=NAME_PATTERN, max_length=63)


class UserCreated(Model):
    """A new user and their first token (shown this once), and what the pool's user mode means for them."""

    user: User
    token: str
    warning: str | None = None


class Member(Model):
    """A project member."""

    user: str
    role: str


class Project(Model):
    """A project, its members and the caller's role in it (None for administrators who are not members)."""

    name: str
    created_at: float
    role: str | None = None
    members: list[Member] = []
    max_idle_timeout_s: int | None = None  # cap on its notebooks' idle_timeout; None: no cap


class ProjectIdleCap(Model):
    """PUT /projects/{name}/idle-cap: cap the project's notebooks' idle_timeout (`2h`, `30m`, seconds), or
    `none` to remove the cap."""

    max_idle_timeout: str | int = Field(examples=["4h", "none"])


class ProjectCreate(Model):
    """POST /projects: a new project (and its queue, named like it)."""

    name: str = Field(pattern=NAME_PATTERN, max_length=63)


class MemberSet(Model):
    """PUT /projects/{name}/members: give `user` a role in the project."""

    user: str = Field(pattern=NAME_PATTERN, max_length=63)
    role: str = Field("member", max_length=16)


# ---------------------------------------------------------------------------------- pool state
class MigInstanceInfo(Model):
    """One MIG instance of a GPU: its position (what a placement's `mig_instance` names), profile, UUID and
    whether a replica holds it."""

    position: int
    profile: str
    uuid: str = ""
    allocated: bool = False


class MpsInfo(Model):
    """The MPS control daemon of a GPU in mps mode: running, stopped or failed (with why), as last checked."""

    state: str
    message: str = ""
    pid: int | None = None
    checked_at: float | None = None


class GpuInfo(Model):
    """One GPU of a node: model, sharing mode, health, MIG instances, MPS daemon, and what is allocated.

    `health` says why an unhealthy card is (an XID or ECC error, sticky until an admin clears it) or that a
    MIG change is in progress; nothing new is placed on it meanwhile."""

    index: int
    model: str
    memory_mib: int
    mode: str
    simulated: bool
    healthy: bool
    allocated_milli: int = 0
    uuid: str = ""
    health: str | None = None
    mig_layout: str | None = None
    mig_instances: list[MigInstanceInfo] = []
    mps: MpsInfo | None = None


class NodeInfo(Model):
    """A node: capacity, what is allocated, its GPUs, and how they were found (`gpu_backend` "nvml" or "fake";
    `gpu_unavailable` says why a node has none when NVML could not be used)."""

    name: str
    source: str
    schedulable: bool
    capacity: Resources
    allocated: Resources
    gpus: list[GpuInfo] = []
    labels: dict[str, str] = {}
    simulated_gpus: bool = False
    gpu_backend: str = ""
    driver_version: str | None = None
    cuda_version: str | None = None
    gpu_unavailable: str | None = None


class Queue(Model):
    """A project's queue: quota, weight, lending, and what it uses and has waiting now."""

    name: str
    project: str
    guaranteed: Resources
    limit: ResourceLimit
    weight: float
    lend: bool
    strict_fifo: bool
    usage: Resources
    running: int = 0
    pending: int = 0
    warnings: list[str] = []  # filled by a change: a guarantee, or all together, larger than the pool


class QueueUpdate(Model):
    """PUT /queues/{name}: fields to change. Amounts use the spec's units, e.g. {gpu: 2, memory: 64GiB}, and
    are merged into the queue's: a resource left out keeps its guarantee or ceiling, "-" or null removes it;
    `limit: {}` removes every ceiling."""

    guaranteed: dict[str, Any] | None = None
    limit: dict[str, Any] | None = None
    weight: float | None = Field(None, gt=0, le=1_000_000)
    lend: bool | None = None
    strict_fifo: bool | None = None


# ----------------------------------------------------------------------------------- workloads
class SubmitRequest(Model):
    """POST /workloads: the spec as YAML text or as a JSON object, and an optional idempotency key (a retried
    submit with the same key returns the workload the first one created). `workdir` is used when the spec
    names none (the CLI sends the directory it runs in when the server is on the same machine)."""

    spec: dict[str, Any] | None = None
    spec_yaml: str | None = Field(None, max_length=MAX_SPEC_CHARS)
    idempotency_key: str | None = Field(None, pattern=KEY_PATTERN)
    workdir: str | None = Field(None, max_length=4096)


MAX_BATCH = 500  # items per batch submit: a few seconds of work for the store at most on a small server


class SubmitBatchRequest(Model):
    """POST /workloads/batch: up to MAX_BATCH submit requests, stored in one transaction: all of them, or none
    when one is refused (the error names it: `items[3].resources`)."""

    items: list[SubmitRequest] = Field(min_length=1, max_length=MAX_BATCH)


class WorkloadSummary(Model):
    """One line of `ls`: status, and for pending work its reason and position in its queue."""

    id: int
    name: str
    kind: str
    project: str
    queue: str
    user: str
    status: str
    priority: int
    replicas: int
    submitted_at: float
    started_at: float | None = None
    finished_at: float | None = None
    message: str = ""
    pending_reason: str | None = None
    queue_position: int | None = None
    attempt: int = 0
    parent_id: int | None = None  # the controller workload (pipeline run, sweep, service, array) it belongs to
    array_index: int | None = None  # a task of a job array: its index (its array is parent_id)
    array: ArraySummary | None = None  # a job array (kind array): its tasks by status


class ArraySummary(Model):
    """A job array at a glance: the indices as written, the cap on tasks at once, tasks by status."""

    indices: str
    limit: int | None = None
    tasks: int
    by_status: dict[str, int] = {}


class ArrayTask(Model):
    """One task of a job array in `show`: its index, its own workload id, status and last message."""

    index: int
    id: int
    status: str
    message: str = ""


class ArrayTaskPage(Model):
    """A page of a job array's tasks in index order; `next_after` (the last index on the page) asks for the
    next page with `?after=`, None on the last page."""

    tasks: list[ArrayTask] = []
    next_after: int | None = None


class GpuAllocation(Model):
    """A GPU (or a share of one) given to a replica."""

    index: int
    milli: int
    memory_mib: int = 0
    mig_instance: int | None = None


class ReplicaEndpoint(Model):
    """A port a replica's spec names: where it listens on its node, whether it accepts connections yet, and the
    server path that proxies to it."""

    port: int
    host: str | None = None
    node_port: int
    ready: bool = False
    proxy_path: str


class Replica(Model):
    """One replica of the current (or a past) run."""

    number: int
    role: str
    attempt: int
    node: str
    state: str
    exit_code: int | None = None
    message: str = ""
    cpu_milli: int = 0
    memory_mib: int = 0
    gpus: list[GpuAllocation] = []
    started_at: float | None = None
    ended_at: float | None = None
    endpoints: list[ReplicaEndpoint] = []


class Event(Model):
    """One entry of a workload's history."""

    at: float
    from_status: str | None = None
    to_status: str | None = None
    replica: int | None = None
    reason: str


class WorkloadDetail(WorkloadSummary):
    """`show`: the summary plus spec, replicas of the current run, counters and history."""

    spec: dict[str, Any]
    retries_used: int = 0
    preemptions: int = 0
    replica_list: list[Replica] = []
    events: list[Event] = []
    tasks: list[ArrayTask] = []  # a job array's first tasks in index order (`?tasks=N`, default 50)
    tasks_next: int | None = None  # more tasks follow: GET .../tasks?after=tasks_next pages on


class WorkloadSubmitted(Model):
    """The answer to a submit: the workload, whether this call created it (False: idempotent replay), and
    warnings (e.g. it asks for more than its queue's limit, so it waits until the limit is raised)."""

    workload: WorkloadDetail
    created: bool
    warnings: list[str] = []


class BatchSubmitted(Model):
    """The answer to a batch submit: one WorkloadSubmitted per item, in the order of the request."""

    items: list[WorkloadSubmitted]


class WorkloadPage(Model):
    """A page of workloads, newest first; pass `next_before_id` as `before_id` for the next page."""

    items: list[WorkloadSummary]
    total: int
    next_before_id: int | None = None
