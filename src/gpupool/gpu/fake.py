"""Scripted fake GPUs: a `GpuBackend` built from a description, for tests and `gpupool up --gpus` demos.

The description is a mapping (or a YAML file) such as:

```yaml
node: demo                       # seeds the GPU UUIDs (stable across runs)
simulated: false                 # true: replicas are told no device is real (CUDA_VISIBLE_DEVICES="")
driver_version: "550.54.15"
cuda_version: "12.4"
repeat: 10m                      # optional: traces and events loop with this period
gpus:
  - model: NVIDIA A100-SXM4-80GB
    memory: 80GiB
    count: 4                     # four identical cards
    nvlink: board0               # cards with the same value are NVLink peers
    sm_count: 108
    utilization: [[0, 0], [30s, 85], [5m, 3]]   # percent, a step function of time
    power: 250                   # watts (a number or a trace)
    temperature: [[0, 35], [1m, 60]]
  - model: NVIDIA A100-SXM4-80GB
    memory: 80GiB
    mig: [3g.40gb, 2g.20gb, 1g.10gb, 1g.10gb]   # MIG enabled with these instances
    events: [{at: 2m, xid: 79}, {at: 3m, ecc: 2}]
processes:
  - {pid: 4242, gpu: 0, memory: [[0, 1GiB], [20s, 12GiB]]}
  - {pid: 4343, gpu: 1, mig: 0, memory: 4GiB}
  - {env: DEMO_GPU_TAG=hog, memory: [[0, 2GiB], [5s, 14GiB]]}   # real processes with this variable
```

An `env:` entry gives every real process whose environment has that variable (one per session) the
memory trace, from when it is first seen, on the card its own CUDA_VISIBLE_DEVICES / GPUPOOL_GPU_INDICES
names (see `gpu/fake_processes.py`): how tests and demos script the GPU use of replicas gpupool starts.

Underneath, `FakeNvml` answers pynvml's calls from this script and the real `NvmlBackend` reads it, so the
fake exercises the same discovery and sampling code as real hardware. `FakeBackend.mig()` applies MIG
layouts to the same cards (see `gpu.mig.apply_layout`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pynvml
import yaml

from gpupool.domain.errors import ValidationError, reject_unknown_keys
from gpupool.domain.resources import parse_duration, parse_memory
from gpupool.gpu.fake_mig import FakeMig
from gpupool.gpu.fake_nvml import (
    FakeCard,
    FakeEvent,
    FakeGpuInstance,
    FakeGpuState,
    FakeNvml,
    FakeProcess,
    Trace,
    constant,
    fake_uuid,
)
from gpupool.gpu.fake_processes import ProcessMatcher, Scanner, default_scanner, parse_env_match, refresh_matched
from gpupool.gpu.mig import catalog_for, validate_layout
from gpupool.gpu.nvml import NvmlBackend
from gpupool.gpu.types import MIB, GpuInventory, NodeSample

_TOP_KEYS = ("node", "driver_version", "cuda_version", "repeat", "simulated", "gpus", "processes", "old_driver",
             "host_pids", "privileged")
_GPU_KEYS = ("model", "memory", "count", "uuid", "sm_count", "compute_capability", "nvlink", "mig",
             "mig_needs_reset", "mig_activation", "reserved", "utilization", "power", "temperature", "events", "lost")
_PROCESS_KEYS = ("pid", "gpu", "memory", "mig", "start", "end", "mps_client", "host_pid")
_ACTIVATION = {"ok": pynvml.NVML_SUCCESS, "in_use": pynvml.NVML_ERROR_IN_USE,
               "reset_required": pynvml.NVML_ERROR_RESET_REQUIRED, "no_permission": pynvml.NVML_ERROR_NO_PERMISSION}
_MATCH_KEYS = ("env", "gpu", "memory", "mig")


def read_description(path: Path) -> dict[str, Any]:
    """Load a YAML description file (ValidationError when it is not a mapping)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValidationError(f"cannot read the fake GPU description {path}: {error}") from None
    if not isinstance(data, dict):
        raise ValidationError(f"{path}: a fake GPU description is a mapping with a `gpus:` list")
    return data


def default_description(count: int, model: str = "NVIDIA A100-SXM4-80GB", memory: str = "80GiB") -> dict[str, Any]:
    """`count` identical cards on one NVLink board (what `gpupool up --gpus N` uses)."""
    return {"node": "local", "gpus": [{"model": model, "memory": memory, "count": count, "nvlink": "board0",
                                       "sm_count": 108}]}


def load_description(data: Mapping[str, Any]) -> FakeGpuState:
    """Build the fake state from a description (see the module docstring). ValidationError names the
    offending field and says what to write instead."""
    reject_unknown_keys(dict(data), _TOP_KEYS, "fake")
    seed = str(data.get("node", "fake"))
    gpus = data.get("gpus", [])
    if not isinstance(gpus, list):
        raise ValidationError("expected a list of GPUs", "fake.gpus")
    cards: list[FakeCard] = []
    for k, item in enumerate(gpus):
        cards += _cards(item, len(cards), seed, f"fake.gpus[{k}]")
    state = FakeGpuState(cards, driver_version=str(data.get("driver_version", "550.54.15")),
                         cuda_version=_cuda_version(data.get("cuda_version", "12.4")),
                         old_driver=_flag(data, "old_driver", False, "fake"),
                         host_pids=_flag(data, "host_pids", False, "fake"),
                         privileged=_flag(data, "privileged", True, "fake"))
    if "repeat" in data:
        state.repeat = float(parse_duration(data["repeat"], "fake.repeat"))
    for k, item in enumerate(data.get("processes", []) or []):
        if not (isinstance(item, dict) and "env" in item):
            state.processes.append(_process(item, len(cards), f"fake.processes[{k}]"))
    return state


def load_matchers(data: Mapping[str, Any], gpu_count: int) -> list[ProcessMatcher]:
    """The `env:` entries of a description's processes (see the module docstring)."""
    processes = data.get("processes", []) or []
    if not isinstance(processes, list):
        raise ValidationError("expected a list of processes", "fake.processes")
    matchers = []
    for k, item in enumerate(processes):
        if isinstance(item, dict) and "env" in item:
            matchers.append(_matcher(item, gpu_count, f"fake.processes[{k}]"))
    return matchers


def _matcher(item: dict[str, Any], gpu_count: int, where: str) -> ProcessMatcher:
    reject_unknown_keys(item, _MATCH_KEYS, where)
    try:
        variable, value = parse_env_match(str(item["env"]))
    except ValueError as error:
        raise ValidationError(str(error), f"{where}.env") from None
    if "memory" not in item:
        raise ValidationError("a process needs memory (a size or a trace)", where)
    gpu = item.get("gpu")
    if gpu is not None and (not isinstance(gpu, int) or not 0 <= gpu < gpu_count):
        raise ValidationError(f"gpu must be an index below {gpu_count}", f"{where}.gpu")
    return ProcessMatcher(variable, value, _trace(item["memory"], f"{where}.memory", memory=True), gpu,
                          item.get("mig"))


def _flag(data: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ValidationError(f"{key} must be true or false, not {value!r}", f"{where}.{key}")
    return value


def _activation(value: Any, where: str) -> int:
    if value in _ACTIVATION:
        return int(_ACTIVATION[value])
    raise ValidationError(f"mig_activation must be one of {', '.join(_ACTIVATION)}, not {value!r}", where)


def _cuda_version(value: Any) -> int:
    if isinstance(value, int):
        return value
    major, _, minor = str(value).partition(".")
    if not major.isdigit() or not (minor or "0").isdigit():
        raise ValidationError(f"write the CUDA version as 12.4, not {value!r}", "fake.cuda_version")
    return int(major) * 1000 + int(minor or 0) * 10


def _cards(item: Any, first_index: int, seed: str, where: str) -> list[FakeCard]:
    if not isinstance(item, dict) or "model" not in item or "memory" not in item:
        raise ValidationError("each GPU needs at least `model` and `memory`", where)
    reject_unknown_keys(item, _GPU_KEYS, where)
    count = item.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValidationError("count must be a whole number >= 1", f"{where}.count")
    if "uuid" in item and count != 1:
        raise ValidationError("a fixed uuid needs count 1", f"{where}.uuid")
    cc = str(item.get("compute_capability", "8.0")).split(".")
    memory_bytes = parse_memory(item["memory"], f"{where}.memory") * MIB
    cards = []
    for k in range(count):
        index = first_index + k
        card = FakeCard(
            index=index, uuid=str(item.get("uuid") or fake_uuid(seed, index)), name=str(item["model"]),
            memory_bytes=memory_bytes, sm_count=item.get("sm_count"),
            compute_capability=(int(cc[0]), int(cc[1]) if len(cc) > 1 else 0),
            nvlink_group=str(item["nvlink"]) if item.get("nvlink") is not None else None,
            mig_model=catalog_for(str(item["model"]), memory_bytes // MIB),
            mig_needs_reset=bool(item.get("mig_needs_reset", False)),
            mig_activation=_activation(item.get("mig_activation", "ok"), f"{where}.mig_activation"),
            reserved_bytes=parse_memory(item.get("reserved", 0), f"{where}.reserved") * MIB,
            utilization=_trace(item.get("utilization", 0), f"{where}.utilization"),
            power_w=_trace(item.get("power", 60), f"{where}.power"),
            temperature_c=_trace(item.get("temperature", 35), f"{where}.temperature"),
            events=_events(item.get("events", []), f"{where}.events"),
            lost=bool(item.get("lost", False)),
        )
        if "mig" in item:
            _partition(card, item["mig"], f"{where}.mig")
        cards.append(card)
    return cards


def _partition(card: FakeCard, layout: Any, where: str) -> None:
    if card.mig_model is None:
        raise ValidationError(f"{card.name} does not support MIG (MIG models: A100, H100 80GB, H200, A30)", where)
    if not isinstance(layout, list):
        raise ValidationError("expected a list of MIG profiles such as [3g.40gb, 1g.10gb]", where)
    card.mig_enabled = card.mig_pending = True
    names, bare_profiles = [], []
    for k, entry in enumerate(layout):
        if isinstance(entry, dict):  # {profile: 1g.10gb, compute_instance: false}: a half-applied layout
            reject_unknown_keys(entry, ("profile", "compute_instance"), f"{where}[{k}]")
            names.append(str(entry.get("profile", "")))
            if entry.get("compute_instance", True) is False:
                bare_profiles.append(card.mig_model.profile(names[-1]).name)
        else:
            names.append(str(entry))
    for instance in validate_layout(card.mig_model, names):
        gi_id = len(card.instances) + 1
        bare = instance.profile.name in bare_profiles
        if bare:
            bare_profiles.remove(instance.profile.name)  # the GPU instance exists, its compute instance not
        card.instances.append(FakeGpuInstance(gi_id, instance.profile, instance.start, [] if bare else [0],
                                              "" if bare else card.new_mig_uuid(gi_id)))


def _time(value: Any, where: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
        return 0.0
    return float(parse_duration(value, where))


def _trace(value: Any, where: str, memory: bool = False) -> Trace:
    """A number/size (constant) or a list of [time, value] pairs."""
    def read(v: Any) -> float:
        if memory:
            return float(parse_memory(v, where) * MIB)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValidationError(f"expected a number, got {v!r}", where)
        return float(v)

    if isinstance(value, list):
        if not value or not all(isinstance(p, list | tuple) and len(p) == 2 for p in value):
            raise ValidationError("a trace is a list of [time, value] pairs, e.g. [[0, 10], [30s, 80]]", where)
        points = sorted((_time(t, where), read(v)) for t, v in value)
        return Trace(tuple(points))
    return constant(read(value))


def _events(value: Any, where: str) -> tuple[FakeEvent, ...]:
    if not isinstance(value, list):
        raise ValidationError("expected a list such as [{at: 2m, xid: 79}]", where)
    events = []
    for k, item in enumerate(value):
        if not isinstance(item, dict) or "at" not in item or len(set(item) & {"xid", "ecc"}) != 1:
            raise ValidationError("an event is {at: TIME, xid: CODE} or {at: TIME, ecc: COUNT}", f"{where}[{k}]")
        kind = "xid" if "xid" in item else "ecc"
        events.append(FakeEvent(_time(item["at"], f"{where}[{k}].at"), kind, int(item[kind])))
    return tuple(sorted(events, key=lambda e: e.at))


def _process(item: Any, gpu_count: int, where: str) -> FakeProcess:
    if not isinstance(item, dict) or not {"pid", "gpu", "memory"} <= set(item):
        raise ValidationError("each process needs pid, gpu and memory", where)
    reject_unknown_keys(item, _PROCESS_KEYS, where)
    if not isinstance(item["gpu"], int) or not 0 <= item["gpu"] < gpu_count:
        raise ValidationError(f"gpu must be an index below {gpu_count}", f"{where}.gpu")
    return FakeProcess(
        pid=int(item["pid"]), gpu=item["gpu"], memory=_trace(item["memory"], f"{where}.memory", memory=True),
        mig=item.get("mig"), start=_time(item.get("start", 0), f"{where}.start"),
        end=_time(item["end"], f"{where}.end") if "end" in item else None,
        mps_client=bool(item.get("mps_client", False)),
        host_pid=int(item["host_pid"]) if item.get("host_pid") is not None else None,
    )


class FakeBackend:
    """GpuBackend over a scripted description. Fake time is `now - epoch`; without an epoch, the first
    `sample(now)` sets it. Processes can be added while running (e.g. a real child's pid), and `env:`
    entries of the description follow real processes found by `scan` (default: this machine's /proc).
    `simulated` is the description's flag: its cards stand for no real device."""

    name = "fake"

    def __init__(self, description: Mapping[str, Any] | FakeGpuState, epoch: float | None = None,
                 scan: Scanner | None = None) -> None:
        if isinstance(description, FakeGpuState):
            self.state, self.matchers, self.simulated = description, [], False
        else:
            self.state = load_description(description)
            self.matchers = load_matchers(description, len(self.state.cards))
            self.simulated = bool(description.get("simulated", False))
        self.nvml = FakeNvml(self.state)
        self.epoch = epoch
        self.scan = scan or default_scanner()
        self._backend = NvmlBackend(load=lambda: self.nvml)

    def discover(self) -> GpuInventory:
        """The scripted cards, as NvmlBackend reads them through the fake NVML."""
        return self._backend.discover()

    def sample(self, now: float) -> NodeSample:
        """Readings at fake time `now - epoch` (after looking for the real processes `env:` entries follow)."""
        self.set_clock(now)
        refresh_matched(self.state, self.matchers, self.scan)
        return self._backend.sample(now)

    def close(self) -> None:
        """Shut the fake NVML down; idempotent."""
        self._backend.close()

    def set_clock(self, now: float) -> None:
        """Move fake time to `now - epoch` (setting the epoch on first use)."""
        if self.epoch is None:
            self.epoch = now
        self.state.clock = max(0.0, now - self.epoch)

    def mig(self) -> FakeMig:
        """A MigNvml on these cards (apply_layout changes what discover() reports next)."""
        return FakeMig(self.state)

    def add_process(self, pid: int, gpu: int, memory: str | int | Trace, mig: int | None = None,
                    start: float | None = None, end: float | None = None) -> None:
        """Script a process (from fake time `start`, default now) using `memory` ("12GiB", bytes or a
        Trace of bytes) on GPU `gpu`."""
        if isinstance(memory, Trace):
            trace = memory
        elif isinstance(memory, str):
            trace = constant(float(parse_memory(memory, "memory") * MIB))
        else:
            trace = constant(float(memory))
        self.state.processes.append(FakeProcess(pid, gpu, trace, mig, self.state.t if start is None else start, end))

    def end_process(self, pid: int) -> None:
        """The process `pid` ends now (it disappears from later samples)."""
        for proc in self.state.processes:
            if proc.pid == pid and proc.end is None:
                proc.end = self.state.t
