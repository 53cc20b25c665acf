"""Nodes and their GPUs as the scheduler sees them: capacity, labels, taints, sharing modes and topology."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from gpupool.domain.errors import ValidationError
from gpupool.domain.resources import (
    MILLI_PER_GPU,
    ReplicaRequest,
    ResourceVector,
    SharingMode,
    mig_profile_slices,
    mig_slice_milli,
)

RACK_LABEL = "topology.gpupool.io/rack"


@dataclass(frozen=True, slots=True)
class MigInstance:
    """One MIG GPU instance: a schedulable device of a profile such as '1g.10gb'."""

    profile: str
    uuid: str = ""

    @property
    def slices(self) -> int:
        """Compute slices of this instance's profile."""
        return mig_profile_slices(self.profile)[0]


@dataclass(frozen=True, slots=True)
class Gpu:
    """One GPU card of a node. Capacity is always 1000 milli; `memory_mib` is the card's memory.

    `nvlink_group` groups cards joined by NVLink on the node (None: no NVLink). In `mig` mode the card is
    only usable through `mig_instances`; `compute_slices` is the card's MIG slice count (7 on A100/H100).
    `healthy` False keeps the scheduler off the card.
    """

    index: int
    model: str
    memory_mib: int
    mode: SharingMode = SharingMode.EXCLUSIVE
    uuid: str = ""
    nvlink_group: int | None = None
    mig_instances: tuple[MigInstance, ...] = ()
    compute_slices: int = 7
    healthy: bool = True
    simulated: bool = False

    def __post_init__(self) -> None:
        if self.memory_mib < 0 or self.index < 0:
            raise ValidationError(f"GPU {self.index}: index and memory must not be negative")
        if self.mig_instances and self.mode != SharingMode.MIG:
            raise ValidationError(f"GPU {self.index}: MIG instances given but the mode is {self.mode}")

    def mig_milli(self, instance: MigInstance) -> int:
        """GPU milli one MIG instance of this card counts as (its share of the compute slices)."""
        return mig_slice_milli(instance.slices, self.compute_slices)


@dataclass(frozen=True, slots=True)
class Taint:
    """A node taint: only replicas that tolerate `key` may be placed on the node (effect NoSchedule)."""

    key: str
    value: str = ""


@dataclass(frozen=True, slots=True)
class Node:
    """A machine of the pool: allocatable CPU (milli) and memory (MiB), GPUs, labels and taints."""

    name: str
    cpu_milli: int
    memory_mib: int
    gpus: tuple[Gpu, ...] = ()
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    taints: tuple[Taint, ...] = ()
    schedulable: bool = True

    def __post_init__(self) -> None:
        if not self.name:
            raise ValidationError("a node needs a name")
        if self.cpu_milli < 0 or self.memory_mib < 0:
            raise ValidationError(f"node {self.name}: CPU and memory must not be negative")
        indices = [g.index for g in self.gpus]
        if len(set(indices)) != len(indices):
            raise ValidationError(f"node {self.name}: GPU indices must be unique, got {indices}")
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))

    @property
    def capacity(self) -> ResourceVector:
        """CPU, memory and GPU milli of the whole node."""
        return ResourceVector(self.cpu_milli, self.memory_mib, MILLI_PER_GPU * len(self.gpus))

    @property
    def rack(self) -> str | None:
        """The node's rack label, if any."""
        return self.labels.get(RACK_LABEL)

    def tolerated_by(self, request: ReplicaRequest) -> bool:
        """True when the request tolerates every taint of this node."""
        return all(t.key in request.tolerations for t in self.taints)

    def selected_by(self, request: ReplicaRequest) -> bool:
        """True when every node_selector pair of the request is a label of this node."""
        return all(self.labels.get(k) == v for k, v in request.node_selector)
