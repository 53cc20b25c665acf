"""`kind: service`: long-running model servers behind the gateway, scaled by load, to zero when idle.

```yaml
kind: service
name: qwen-chat
project: nlp
command: vllm serve Qwen/Qwen2.5-0.5B-Instruct --served-model-name qwen2.5-0.5b --port $PORT
resources: {gpu: {share: 0.5}, cpu: 4, memory: 32GiB}
port: 8000                  # the name of the port; the replica listens on $PORT
readiness: {path: /health, timeout: 10m}  # traffic once this answers 2xx; replaced if not within timeout
models: [qwen2.5-0.5b]      # names the OpenAI-compatible gateway routes to this service
replicas: {min: 0, max: 4}
scaling: {target_inflight: 8, scale_down_delay: 5m, cold_start_timeout: 10m, max_queue: 64}
priority: high
environment: vllm           # optional: replicas run in this Python environment (`gpupool envs create`)
```

A service is a controller: its workload row is never placed; each replica is a child workload (a `kind: job`
whose command serves until stopped, `child_spec`) that the scheduler queues and places like any other, so
quotas, GPU sharing and preemption apply to replicas unchanged. This module is pure: parsing, the children's
spec and the autoscaling arithmetic (`desired_replicas`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gpupool.domain.errors import ValidationError, reject_unknown_keys
from gpupool.domain.resources import parse_duration
from gpupool.domain.specs import WorkloadKind, WorkloadSpec, _parse_common, _parse_int, parse_spec

MAX_SERVICE_REPLICAS = 64  # a service on a pool of a few nodes; the bound keeps a typo from flooding the queue
MAX_MODELS = 32
MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$")  # served model names (vLLM, OpenAI style)
PATH_RE = re.compile(r"^/[A-Za-z0-9._~/%-]{0,200}$")
# Defaults as the spec example: 8 concurrent requests per replica suits a small model batching on one GPU;
# 5 minutes of quiet before scaling down rides out gaps between bursts; a 10-minute cold start covers
# downloading and loading a multi-GB model. A queue of 64 held requests bounds the memory of a cold start.
DEFAULT_TARGET_INFLIGHT = 8
DEFAULT_SCALE_DOWN_DELAY_S = 300
DEFAULT_COLD_START_TIMEOUT_S = 600
DEFAULT_MAX_QUEUE = 64
DEFAULT_READINESS_PATH = "/health"
DEFAULT_READINESS_TIMEOUT_S = 600  # loading a multi-GB model from a cold disk takes minutes; 10 min covers it
DEFAULT_PORT = 8000
_SERVICE_KEYS = ("kind", "name", "project", "queue", "priority", "resources", "command", "env", "preemptible",
                 "workdir", "environment", "port", "readiness", "models", "replicas", "scaling")
_SCALING_KEYS = ("target_inflight", "scale_down_delay", "cold_start_timeout", "max_queue")


@dataclass(frozen=True, slots=True)
class Scaling:
    """How a service scales: replicas wanted per `target_inflight` requests in flight; scale down only after
    `scale_down_delay_s` below the current count; a held request waits at most `cold_start_timeout_s`;
    at most `max_queue` requests are held per service."""

    target_inflight: int = DEFAULT_TARGET_INFLIGHT
    scale_down_delay_s: int = DEFAULT_SCALE_DOWN_DELAY_S
    cold_start_timeout_s: int = DEFAULT_COLD_START_TIMEOUT_S
    max_queue: int = DEFAULT_MAX_QUEUE


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSpec(WorkloadSpec):
    """A service: `command` serves `models` on `$PORT`; `min_replicas..max_replicas` replicas, each one a
    child workload with one replica of `roles[0].resources`."""

    port: int = DEFAULT_PORT
    readiness_path: str = DEFAULT_READINESS_PATH
    readiness_timeout_s: int = DEFAULT_READINESS_TIMEOUT_S  # a running replica not ready by then is replaced
    models: tuple[str, ...] = ()
    min_replicas: int = 0
    max_replicas: int = 1
    scaling: Scaling = field(default_factory=Scaling)

    def to_dict(self) -> dict[str, Any]:
        """Canonical plain-data form; `parse_spec(spec.to_dict()) == spec`."""
        out = WorkloadSpec.to_dict(self)
        for key in ("ports", "max_runtime", "min_available"):
            out.pop(key, None)
        s = self.scaling
        return out | {"port": self.port, "models": list(self.models),
                      "readiness": {"path": self.readiness_path, "timeout": self.readiness_timeout_s},
                      "replicas": {"min": self.min_replicas, "max": self.max_replicas},
                      "scaling": {"target_inflight": s.target_inflight, "scale_down_delay": s.scale_down_delay_s,
                                  "cold_start_timeout": s.cold_start_timeout_s, "max_queue": s.max_queue}}


def parse_service(data: dict[str, Any]) -> ServiceSpec:
    """Parse a `kind: service` spec (see the module docstring); ValidationError naming the field otherwise."""
    reject_unknown_keys(data, _SERVICE_KEYS)
    if data.get("command") is None:
        raise ValidationError("a service needs a command that serves on $PORT, e.g. command: vllm serve MODEL "
                              "--port $PORT", "command")
    port = _parse_int(data.get("port", DEFAULT_PORT), "port", 1, 65535)
    common_data = {k: v for k, v in data.items() if k not in ("port", "readiness", "models", "replicas", "scaling")}
    common = _parse_common(common_data | {"ports": [port]}, WorkloadKind.SERVICE)
    low, high = _parse_replicas(data.get("replicas", {"min": 0, "max": 1}))
    path, timeout = _parse_readiness(data.get("readiness"))
    return ServiceSpec(**common, port=port, readiness_path=path, readiness_timeout_s=timeout,
                       models=_parse_models(data.get("models")), min_replicas=low, max_replicas=high,
                       scaling=_parse_scaling(data.get("scaling")))


def _parse_replicas(value: Any) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        n = _parse_int(value, "replicas", 0, MAX_SERVICE_REPLICAS)
        return n, max(n, 1)
    if not isinstance(value, Mapping):
        raise ValidationError("expected replicas: {min: 0, max: 4} (or a fixed count)", "replicas")
    value = dict(value)
    reject_unknown_keys(value, ("min", "max"), "replicas")
    low = _parse_int(value.get("min", 0), "replicas.min", 0, MAX_SERVICE_REPLICAS)
    high = _parse_int(value.get("max", max(low, 1)), "replicas.max", 1, MAX_SERVICE_REPLICAS)
    if low > high:
        raise ValidationError(f"min ({low}) is larger than max ({high})", "replicas.min")
    return low, high


def _parse_readiness(value: Any) -> tuple[str, int]:
    if value is None:
        return DEFAULT_READINESS_PATH, DEFAULT_READINESS_TIMEOUT_S
    if not isinstance(value, Mapping):
        raise ValidationError("expected readiness: {path: /health, timeout: 10m}", "readiness")
    value = dict(value)
    reject_unknown_keys(value, ("path", "timeout"), "readiness")
    path = value.get("path", DEFAULT_READINESS_PATH)
    if not isinstance(path, str) or not PATH_RE.match(path):
        raise ValidationError(f"expected an HTTP path such as /health, got {path!r}", "readiness.path")
    timeout = parse_duration(value.get("timeout", DEFAULT_READINESS_TIMEOUT_S), "readiness.timeout")
    return path, max(1, timeout)


def _parse_models(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not 1 <= len(items) <= MAX_MODELS:
        raise ValidationError(f"name 1..{MAX_MODELS} models the gateway routes here, e.g. models: [qwen2.5-0.5b]",
                              "models")
    for i, name in enumerate(items):
        if not isinstance(name, str) or not MODEL_RE.match(name):
            raise ValidationError(f"{name!r} is not a model name (letters, digits and ._:/@+-)", f"models[{i}]")
    if len(set(items)) != len(items):
        raise ValidationError(f"a model is listed twice in {list(items)}", "models")
    return tuple(items)


def _parse_scaling(value: Any) -> Scaling:
    if value is None:
        return Scaling()
    if not isinstance(value, Mapping):
        raise ValidationError("expected scaling: {target_inflight: 8, scale_down_delay: 5m}", "scaling")
    value = dict(value)
    reject_unknown_keys(value, _SCALING_KEYS, "scaling")
    d = Scaling()
    return Scaling(
        target_inflight=_parse_int(value.get("target_inflight", d.target_inflight), "scaling.target_inflight", 1,
                                   10_000),
        scale_down_delay_s=parse_duration(value.get("scale_down_delay", d.scale_down_delay_s),
                                          "scaling.scale_down_delay"),
        cold_start_timeout_s=max(1, parse_duration(value.get("cold_start_timeout", d.cold_start_timeout_s),
                                                   "scaling.cold_start_timeout")),
        max_queue=_parse_int(value.get("max_queue", d.max_queue), "scaling.max_queue", 0, 100_000))


def child_name(service: str, revision: int) -> str:
    """The name of the replica workloads of revision `revision` (the service's name cut to 50 characters, so
    the suffix always fits the 63 of a name and tells revisions apart)."""
    return f"{service[:50].rstrip('-_')}-r{revision}"


def child_spec(spec: ServiceSpec, revision: int) -> dict[str, Any]:
    """The spec of one replica of revision `revision`: a job of one replica that serves until stopped, with
    `PORT` set to the port the executor chose (GPUPOOL_PORT), in the service's Python environment if it
    names one."""
    out: dict[str, Any] = {
        "kind": "job", "name": child_name(spec.name, revision), "priority": spec.priority,
        "replicas": 1, "resources": WorkloadSpec.to_dict(spec)["resources"], "ports": [spec.port],
        "command": f'export PORT="$GPUPOOL_PORT"; {spec.command}', "preemptible": spec.preemptible,
        "env": dict(spec.env)}
    out |= {k: v for k, v in (("project", spec.project), ("queue", spec.queue), ("workdir", spec.workdir),
                              ("environment", spec.environment)) if v}
    parse_spec(out)  # a service spec that parsed always gives a valid child; this keeps it so
    return out


@dataclass(frozen=True, slots=True)
class ScaleInput:
    """What the autoscaler knows of one service at `now`: requests in flight and held, live replicas, and
    when the load last needed at least `current` replicas."""

    inflight: int
    held: int
    current: int
    busy_at: float  # the last time the wanted count was >= current (or the service started)
    now: float


def wanted(spec: ServiceSpec, inflight: int, held: int) -> int:
    """ceil((in flight + held) / target_inflight) within [min, max]; at least 1 while a request is held."""
    need = math.ceil((inflight + held) / spec.scaling.target_inflight)
    if held:
        need = max(need, 1)
    return max(spec.min_replicas, min(spec.max_replicas, need))


def desired_replicas(spec: ServiceSpec, s: ScaleInput) -> tuple[int, str]:
    """The replica count to converge to now, and why. Up at once to `wanted`; down (one step to `wanted`) only
    once the load has wanted fewer than `current` for `scale_down_delay_s` (smoothing: a dip shorter than the
    delay changes nothing)."""
    want = wanted(spec, s.inflight, s.held)
    load = f"{s.inflight} in flight, {s.held} held, target {spec.scaling.target_inflight} per replica"
    if want > s.current:
        return want, f"scale up {s.current} -> {want}: {load}"
    if want == s.current:
        return want, ""
    quiet = s.now - s.busy_at
    if quiet < spec.scaling.scale_down_delay_s:
        return s.current, ""
    what = "scale to zero" if want == 0 else f"scale down {s.current} -> {want}"
    return want, f"{what}: {load} for {quiet:.0f}s (scale_down_delay {spec.scaling.scale_down_delay_s}s)"
