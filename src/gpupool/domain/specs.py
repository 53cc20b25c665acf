"""Workload specs: the flat YAML a user submits, parsed into checked, immutable values.

One format for every kind of workload, told apart by `kind:`. This module parses `kind: job`; notebook,
service, pipeline and sweep are known kinds whose parsers come later (they are refused with a clear
message until then). A spec is parsed from plain data (what YAML or JSON gives), every error says which
field is wrong and how to write it, and `to_dict` gives a canonical form that parses back to an equal spec.

```yaml
kind: job
name: resnet-ddp
project: vision
replicas: 4              # several replicas: one gang, all or nothing
distributed: torch       # torch | tensorflow (tensorflow usually with roles: {chief, worker, ps})
resources: {cpu: 4, memory: 16GiB, gpu: 1}
command: python train.py --epochs 10
env: {NCCL_DEBUG: WARN}
priority: high           # low | normal | high, or a number 0..1000
max_runtime: 6h
retries: 1
```
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from gpupool.domain.arrays import ArraySpec, parse_array

# defined in display (light enough for the CLI's start) and re-exported here
from gpupool.domain.display import MAX_PRIORITY as MAX_PRIORITY  # noqa: PLC0414
from gpupool.domain.display import PRIORITY_NAMES as PRIORITY_NAMES  # noqa: PLC0414
from gpupool.domain.display import priority_name as priority_name  # noqa: PLC0414
from gpupool.domain.errors import ValidationError, did_you_mean, reject_unknown_keys
from gpupool.domain.resources import GpuRequest, ReplicaRequest, parse_duration, parse_request

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
RESERVED_ENV_PREFIXES = ("GPUPOOL_", "CUDA_MPS_")
RESERVED_ENV_NAMES = frozenset({"CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"})
MAX_WORKDIR_CHARS = 4096
TORCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK")
TENSORFLOW_ENV = ("TF_CONFIG",)
MAX_REPLICAS = 1024
MAX_RETRIES = 100
MAX_RUNTIME_S = 365 * 86400
MAX_COMMAND_CHARS = 65_536
MAX_ENV_ENTRIES = 256
MAX_ENV_VALUE_CHARS = 32_768
MAX_PORTS = 16  # a replica serves a handful of ports (web UI, API, metrics); 16 bounds its env and port use
ROLE_ORDER = ("chief", "worker", "ps")  # replica numbering follows this order
DEFAULT_RESOURCES: Mapping[str, Any] = MappingProxyType({"cpu": 1, "memory": "1GiB"})


class WorkloadKind(StrEnum):
    """What a workload is; `job` runs to completion, the others arrive in later versions."""

    JOB = "job"
    NOTEBOOK = "notebook"
    SERVICE = "service"
    PIPELINE = "pipeline"
    SWEEP = "sweep"


class Distributed(StrEnum):
    """Which rendezvous environment the replicas of a gang get."""

    TORCH = "torch"  # MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK, NODE_RANK
    TENSORFLOW = "tensorflow"  # TF_CONFIG


@dataclass(frozen=True, slots=True)
class RoleSpec:
    """`replicas` identical replicas of one role; `command`/`env` (when set) replace/extend the workload's."""

    role: str
    replicas: int
    resources: ReplicaRequest
    command: str | None = None
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadSpec:
    """What every kind of workload has. Kind-specific specs subclass it (JobSpec).

    `roles` is never empty: a spec with `replicas: N` has one role, `worker`. `project`/`queue` may be None
    (the server fills in the caller's project and that project's queue). Replica numbers follow ROLE_ORDER.
    """

    kind: WorkloadKind
    name: str
    project: str | None = None
    queue: str | None = None
    priority: int = PRIORITY_NAMES["normal"]
    roles: tuple[RoleSpec, ...]
    command: str | None = None
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    max_runtime_s: int | None = None
    preemptible: bool = True
    min_available: int | None = None
    workdir: str | None = None  # absolute directory the command starts in (default: the user's storage dir)
    ports: tuple[int, ...] = ()  # ports each replica listens on, as the user names them (see parse_ports)
    environment: str | None = None  # a Python environment built by `gpupool envs create` (its bin first on PATH)
    uses_roles: bool = False  # written with roles: rather than replicas:

    @property
    def replica_count(self) -> int:
        """Replicas over all roles."""
        return sum(r.replicas for r in self.roles)

    @property
    def gang_size(self) -> int:
        """How many replicas must start together (min_available, else all)."""
        return self.min_available if self.min_available is not None else self.replica_count

    def replica_roles(self) -> list[tuple[int, RoleSpec, int]]:
        """(replica number, role, ordinal within the role) for every replica, in replica-number order."""
        out: list[tuple[int, RoleSpec, int]] = []
        for role in self.roles:
            for k in range(role.replicas):
                out.append((len(out), role, k))
        return out

    def rendezvous(self) -> str | None:
        """The rendezvous environment its replicas get ("torch", "tensorflow"), or None; only jobs have one."""
        return None

    def command_for(self, role: RoleSpec) -> str:
        """The command a replica of `role` runs."""
        command = role.command or self.command
        if command is None:  # parsing guarantees one of them; keep the type checker honest
            raise ValidationError(f"role {role.role} has no command", "command")
        return command

    def env_for(self, role: RoleSpec) -> dict[str, str]:
        """The user environment of a replica of `role` (the workload's env, then the role's)."""
        return {**self.env, **role.env}

    def to_dict(self) -> dict[str, Any]:
        """Canonical plain-data form; `parse_spec(spec.to_dict()) == spec`."""
        out: dict[str, Any] = {"kind": self.kind.value, "name": self.name}
        out |= {k: v for k, v in (("project", self.project), ("queue", self.queue)) if v is not None}
        out["priority"] = self.priority
        if self.uses_roles:
            out["roles"] = {r.role: _role_to_dict(r) for r in self.roles}
        else:
            out["replicas"] = self.roles[0].replicas
            out["resources"] = request_to_dict(self.roles[0].resources)
        if self.command is not None:
            out["command"] = self.command
        if self.env:
            out["env"] = dict(self.env)
        if self.max_runtime_s is not None:
            out["max_runtime"] = self.max_runtime_s
        out["preemptible"] = self.preemptible
        if self.min_available is not None:
            out["min_available"] = self.min_available
        if self.workdir is not None:
            out["workdir"] = self.workdir
        if self.ports:
            out["ports"] = list(self.ports)
        if self.environment is not None:
            out["environment"] = self.environment
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec(WorkloadSpec):
    """A job: runs its command to completion. `retries` re-runs the whole gang after a failure."""

    distributed: Distributed | None = None
    retries: int = 0
    array: ArraySpec | None = None  # a job array: one task per index (see gpupool.domain.arrays)

    def rendezvous(self) -> str | None:
        """`distributed:` as text, or None."""
        return self.distributed.value if self.distributed is not None else None

    def to_dict(self) -> dict[str, Any]:
        """Canonical plain-data form; `parse_spec(spec.to_dict()) == spec`."""
        out = WorkloadSpec.to_dict(self)
        if self.distributed is not None:
            out["distributed"] = self.distributed.value
        out["retries"] = self.retries
        if self.array is not None:
            out["array"] = self.array.text
        return out


# ------------------------------------------------------------------------------------------ parsing
_COMMON_KEYS = ("kind", "name", "project", "queue", "priority", "replicas", "roles", "resources", "command",
                "env", "max_runtime", "preemptible", "min_available", "workdir", "ports", "environment")
_JOB_KEYS = (*_COMMON_KEYS, "distributed", "retries", "array")
_ROLE_KEYS = ("replicas", "resources", "command", "env")


def parse_spec(data: Any) -> WorkloadSpec:
    """Parse a workload spec from plain data (a mapping with a `kind:`; `kind` defaults to job).

    Raises ValidationError naming the offending field, with a "did you mean" for unknown fields and kinds.
    """
    if not isinstance(data, Mapping):
        raise ValidationError("a workload spec must be a mapping such as {kind: job, command: ...}, got "
                              f"{type(data).__name__}")
    data = dict(data)
    kind_value = data.get("kind", WorkloadKind.JOB.value)
    if not isinstance(kind_value, str):
        raise ValidationError(f"expected a kind name, got {kind_value!r}", "kind")
    try:
        kind = WorkloadKind(kind_value.strip().lower())
    except ValueError:
        names = [k.value for k in WorkloadKind]
        raise ValidationError(f"unknown kind {kind_value!r}{did_you_mean(kind_value, names)}; "
                              f"kinds: {', '.join(names)}", "kind") from None
    parser = _PARSERS.get(kind)
    if parser is None:
        supported = ", ".join(k.value for k in _PARSERS)
        raise ValidationError(f"kind {kind.value!r} is not available in this version yet; supported: {supported}",
                              "kind")
    return parser(data)


def _parse_job(data: dict[str, Any]) -> JobSpec:
    reject_unknown_keys(data, _JOB_KEYS)
    common = _parse_common(data, WorkloadKind.JOB)
    distributed = _parse_distributed(data.get("distributed"))
    retries = _parse_int(data.get("retries", 0), "retries", 0, MAX_RETRIES)
    array = parse_array(data["array"]) if data.get("array") is not None else None
    spec = JobSpec(distributed=distributed, retries=retries, array=array, **common)
    _check_job(spec)
    return spec


def _parse_common(data: dict[str, Any], kind: WorkloadKind) -> dict[str, Any]:
    roles, uses_roles = _parse_roles(data)
    command = _parse_command(data["command"], "command") if data.get("command") is not None else None
    if command is None and any(r.command is None for r in roles):
        raise ValidationError("a job needs a command, e.g. command: python train.py", "command")
    total = sum(r.replicas for r in roles)
    min_available = None
    if data.get("min_available") is not None:
        min_available = _parse_int(data["min_available"], "min_available", 1, total)
    return {
        "kind": kind,
        "name": validate_name(data.get("name", kind.value), "name"),
        "project": validate_name(data["project"], "project") if data.get("project") is not None else None,
        "queue": validate_name(data["queue"], "queue") if data.get("queue") is not None else None,
        "priority": parse_priority(data.get("priority", "normal")),
        "roles": roles,
        "command": command,
        "env": parse_env(data.get("env"), "env"),
        "max_runtime_s": _parse_runtime(data.get("max_runtime")),
        "preemptible": _parse_bool(data.get("preemptible", True), "preemptible"),
        "min_available": min_available,
        "workdir": _parse_workdir(data.get("workdir")),
        "ports": parse_ports(data.get("ports")),
        "environment": _parse_environment_name(data.get("environment")),
        "uses_roles": uses_roles,
    }


def parse_ports(value: Any) -> tuple[int, ...]:
    """`ports: [8888, 6006]`: the ports a replica listens on, as named in the spec. The executor gives each a
    free port on the replica's node, passed as GPUPOOL_PORT_<name> (and GPUPOOL_PORT for the first); the
    server proxies /workloads/<id>/ports/<name>/ to it."""
    if value is None:
        return ()
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(items, list | tuple) or len(items) > MAX_PORTS:
        raise ValidationError(f"expected a list of at most {MAX_PORTS} port numbers, e.g. ports: [8888]", "ports")
    ports = tuple(_parse_int(item, f"ports[{i}]", 1, 65535) for i, item in enumerate(items))
    if len(set(ports)) != len(ports):
        raise ValidationError(f"a port is listed twice in {list(ports)}", "ports")
    return ports


def _parse_roles(data: dict[str, Any]) -> tuple[tuple[RoleSpec, ...], bool]:
    default_resources = _with_defaults(data.get("resources"), "resources")
    if "roles" not in data:
        replicas = _parse_int(data.get("replicas", 1), "replicas", 1, MAX_REPLICAS)
        return (RoleSpec("worker", replicas, parse_request(default_resources, "resources")),), False
    if "replicas" in data:
        raise ValidationError("give either replicas: N or roles: {...}, not both", "replicas")
    roles_data = data["roles"]
    if not isinstance(roles_data, Mapping) or not roles_data:
        raise ValidationError("expected a mapping of roles, e.g. {chief: {replicas: 1}, worker: {replicas: 2}}",
                              "roles")
    reject_unknown_keys(dict(roles_data), ROLE_ORDER, "roles")
    roles = [_parse_role(name, roles_data[name], default_resources) for name in ROLE_ORDER if name in roles_data]
    total = sum(r.replicas for r in roles)
    if total > MAX_REPLICAS:
        raise ValidationError(f"{total} replicas in all; at most {MAX_REPLICAS}", "roles")
    return tuple(roles), True


def _parse_role(name: str, value: Any, default_resources: Mapping[str, Any]) -> RoleSpec:
    where = f"roles.{name}"
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ValidationError("expected a mapping such as {replicas: 2, resources: {cpu: 2}}", where)
    value = dict(value)
    reject_unknown_keys(value, _ROLE_KEYS, where)
    replicas = _parse_int(value.get("replicas", 1), f"{where}.replicas", 1, MAX_REPLICAS)
    if name == "chief" and replicas != 1:
        raise ValidationError("a job has at most one chief", f"{where}.replicas")
    resources = _with_defaults(value["resources"], f"{where}.resources") if "resources" in value \
        else default_resources
    command = _parse_command(value["command"], f"{where}.command") if value.get("command") is not None else None
    return RoleSpec(name, replicas, parse_request(resources, f"{where}.resources"), command,
                    parse_env(value.get("env"), f"{where}.env"))


def _check_job(spec: JobSpec) -> None:
    if spec.distributed is None:
        return
    if spec.distributed == Distributed.TORCH and spec.uses_roles:
        raise ValidationError("torch jobs use replicas: N (every replica is a rank), not roles", "roles")
    if spec.min_available is not None and spec.min_available != spec.replica_count:
        raise ValidationError("a distributed job needs all its replicas at once; remove min_available",
                              "min_available")
    injected = TORCH_ENV if spec.distributed == Distributed.TORCH else TENSORFLOW_ENV
    for env in (spec.env, *(r.env for r in spec.roles)):
        clash = sorted(set(env) & set(injected))
        if clash:
            raise ValidationError(f"{', '.join(clash)} is set by gpupool for {spec.distributed} jobs; remove it",
                                  "env")


# ----------------------------------------------------------------------------------- field parsers
def validate_name(value: Any, field_name: str = "name") -> str:
    """A name for a workload, project, queue or user: 1-63 lower-case letters, digits, '-' or '_', starting
    and ending with a letter or digit. Names end up in paths, so nothing else (no '/', no '..') passes."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValidationError(f"{value!r} is not a valid name: use 1-63 lower-case letters, digits, '-' or '_', "
                              "starting and ending with a letter or digit (e.g. resnet-ddp)", field_name)
    return value


def parse_priority(value: Any, field_name: str = "priority") -> int:
    """A priority: low, normal, high (100, 500, 900) or a whole number 0..1000; higher runs first."""
    if isinstance(value, str):
        key = value.strip().lower()
        if key in PRIORITY_NAMES:
            return PRIORITY_NAMES[key]
        if not key.isdigit():
            raise ValidationError(f"unknown priority {value!r}{did_you_mean(key, PRIORITY_NAMES)}; use "
                                  f"{', '.join(PRIORITY_NAMES)} or a number 0..{MAX_PRIORITY}", field_name)
        value = int(key)
    return _parse_int(value, field_name, 0, MAX_PRIORITY)


def parse_env(value: Any, field_name: str = "env") -> Mapping[str, str]:
    """Environment variables: a mapping of NAME -> string (numbers and booleans are written as text)."""
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping):
        raise ValidationError("expected a mapping such as {NCCL_DEBUG: WARN}", field_name)
    if len(value) > MAX_ENV_ENTRIES:
        raise ValidationError(f"{len(value)} variables; at most {MAX_ENV_ENTRIES}", field_name)
    out: dict[str, str] = {}
    for key, item in value.items():
        where = f"{field_name}.{key}"
        if not isinstance(key, str) or not ENV_KEY_RE.match(key):
            raise ValidationError("not a valid variable name (letters, digits and _, not starting with a digit)",
                                  where)
        if key.upper().startswith(RESERVED_ENV_PREFIXES) or key.upper() in RESERVED_ENV_NAMES:
            raise ValidationError("gpupool sets this variable itself (GPUPOOL_*, CUDA_MPS_*, CUDA_VISIBLE_DEVICES, "
                                  "NVIDIA_VISIBLE_DEVICES); choose another name", where)
        if isinstance(item, bool):
            text = "true" if item else "false"
        elif isinstance(item, str | int | float):
            text = str(item)
        else:
            raise ValidationError(f"expected a string, number or boolean, got {type(item).__name__}", where)
        if len(text) > MAX_ENV_VALUE_CHARS or "\x00" in text:
            raise ValidationError(f"value too long (at most {MAX_ENV_VALUE_CHARS} characters) or has a NUL", where)
        out[key] = text
    return MappingProxyType(out)


def _parse_command(value: Any, field_name: str) -> str:
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        value = shlex.join(value)
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("expected a command line (a string, or a list of arguments)", field_name)
    if len(value) > MAX_COMMAND_CHARS or "\x00" in value:
        raise ValidationError(f"the command is longer than {MAX_COMMAND_CHARS} characters or has a NUL; put it "
                              "in a script", field_name)
    return value


def _parse_environment_name(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValidationError(f"{value!r} is not an environment name (see `gpupool envs ls`)", "environment")
    return value


def _parse_workdir(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/") or "\x00" in value or len(value) > MAX_WORKDIR_CHARS:
        raise ValidationError("expected an absolute directory path such as /home/me/project", "workdir")
    parts = value.split("/")
    if ".." in parts:
        raise ValidationError("write the directory without '..'", "workdir")
    return value


def _parse_distributed(value: Any) -> Distributed | None:
    if value is None or value is False:
        return None
    names = [d.value for d in Distributed]
    if not isinstance(value, str) or value.strip().lower() not in names:
        hint = did_you_mean(value, names) if isinstance(value, str) else ""
        raise ValidationError(f"unknown value {value!r}{hint}; use {' or '.join(names)}", "distributed")
    return Distributed(value.strip().lower())


def _parse_runtime(value: Any) -> int | None:
    if value is None:
        return None
    seconds = parse_duration(value, "max_runtime")
    if seconds > MAX_RUNTIME_S:
        raise ValidationError(f"{value!r} is longer than a year; leave max_runtime out for no limit", "max_runtime")
    return seconds


def _parse_int(value: Any, field_name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"expected a whole number, got {value!r}", field_name)
    if not low <= value <= high:
        raise ValidationError(f"{value} is out of range; use {low}..{high}", field_name)
    return value


def _parse_bool(value: Any, field_name: str) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(f"expected true or false, got {value!r}", field_name)
    return value


def _with_defaults(value: Any, field_name: str) -> Mapping[str, Any]:
    if value is None:
        return DEFAULT_RESOURCES
    if not isinstance(value, Mapping):
        raise ValidationError("expected a mapping such as {cpu: 4, memory: 16GiB, gpu: 1}", field_name)
    return {**DEFAULT_RESOURCES, **value}


# ------------------------------------------------------------------------------- canonical output
def request_to_dict(request: ReplicaRequest) -> dict[str, Any]:
    """A `resources:` mapping that parses back to `request` (cpu in cores or milli, memory in GiB or MiB)."""
    cpu: Any = request.cpu_milli // 1000 if request.cpu_milli % 1000 == 0 else f"{request.cpu_milli}m"
    out: dict[str, Any] = {"cpu": cpu, "memory": _memory_text(request.memory_mib)}
    gpu = _gpu_to_dict(request.gpu)
    if gpu is not None:
        out["gpu"] = gpu
    return out


def _memory_text(mib: int) -> str:
    return f"{mib // 1024}GiB" if mib % 1024 == 0 else f"{mib}MiB"


def _gpu_to_dict(gpu: GpuRequest) -> dict[str, Any] | None:
    kind = gpu.kind
    if kind == "none":
        return None
    out: dict[str, Any] = {}
    if kind == "whole":
        out["count"] = gpu.count
        if gpu.min_memory_mib:
            out["memory"] = _memory_text(gpu.min_memory_mib)
    elif kind == "share":
        if gpu.share_milli:
            out["share"] = f"{gpu.share_milli}m"
        if gpu.share_memory_mib:
            out["memory"] = _memory_text(gpu.share_memory_mib)
    else:
        out |= {"mig": gpu.mig_profile, "count": gpu.count}
    if gpu.models:
        out["model"] = list(gpu.models)
    return out


def _role_to_dict(role: RoleSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"replicas": role.replicas, "resources": request_to_dict(role.resources)}
    if role.command is not None:
        out["command"] = role.command
    if role.env:
        out["env"] = dict(role.env)
    return out


def _parse_sweep(data: dict[str, Any]) -> WorkloadSpec:
    from gpupool.domain.sweeps import parse_sweep  # noqa: PLC0415  (sweeps.py builds on this module)

    return parse_sweep(data)


def _parse_pipeline(data: dict[str, Any]) -> WorkloadSpec:
    from gpupool.domain.pipelines import parse_pipeline  # noqa: PLC0415  (it imports this module)

    return parse_pipeline(data)


def _parse_service(data: dict[str, Any]) -> WorkloadSpec:
    from gpupool.domain.services import parse_service  # noqa: PLC0415  (services.py builds on this module)

    return parse_service(data)


def _parse_notebook(data: dict[str, Any]) -> WorkloadSpec:
    from gpupool.domain.notebooks import parse_notebook  # noqa: PLC0415  (its own module builds on this one)

    return parse_notebook(data)



_PARSERS: dict[WorkloadKind, Callable[[dict[str, Any]], WorkloadSpec]] = {
    WorkloadKind.JOB: _parse_job,
    WorkloadKind.NOTEBOOK: _parse_notebook,
    WorkloadKind.SWEEP: _parse_sweep,
    WorkloadKind.PIPELINE: _parse_pipeline,
    WorkloadKind.SERVICE: _parse_service,
}
