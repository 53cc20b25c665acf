"""QueueSpec: a team's share of the pool (guarantee, limit, weight, lending), and its parsing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gpupool.domain.errors import ValidationError, reject_unknown_keys
from gpupool.domain.resources import MILLI_PER_GPU, ZERO, ResourceVector, parse_cpu, parse_memory, parse_number

_QUEUE_KEYS = ("guaranteed", "limit", "weight", "lend", "strict_fifo")
_AMOUNT_KEYS = ("cpu", "memory", "gpu")
UNLIMITED = 2**53  # a limit component that no pool reaches: what a limit leaves out is not limited


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A queue (one per project).

    - `guaranteed`: capacity the queue can always claim back (others may borrow it while it is idle).
    - `limit`: the most the queue may use, borrowing included (None: no ceiling beyond the pool).
    - `weight`: its weight when idle capacity is shared (weighted dominant-resource fairness).
    - `lend`: whether others may borrow its idle guarantee.
    - `strict_fifo`: a blocked head blocks the rest of this queue (it never stops the queue from lending).
    """

    name: str
    guaranteed: ResourceVector = ZERO
    limit: ResourceVector | None = None
    weight: float = 1.0
    lend: bool = True
    strict_fifo: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            raise ValidationError("a queue needs a name", "name")
        if not self.weight > 0:
            raise ValidationError(f"weight must be above 0 (got {self.weight})", "weight")
        if min(self.guaranteed.as_tuple()) < 0:
            raise ValidationError("guaranteed amounts must not be negative", "guaranteed")
        if self.limit is not None:
            if min(self.limit.as_tuple()) < 0:
                raise ValidationError("limit amounts must not be negative", "limit")
            over = self.guaranteed.exceeding(self.limit)
            if over:
                raise ValidationError(f"the guarantee exceeds the limit for {', '.join(over)}", "limit")


def parse_amounts(data: Any, field_name: str, missing: int = 0) -> ResourceVector:
    """Parse {cpu: 32, memory: 256GiB, gpu: 8} (gpu may be fractional: 0.5 = 500 milli) into a vector;
    a resource the mapping leaves out gets `missing` (0 for a guarantee, UNLIMITED for a limit)."""
    if not isinstance(data, Mapping):
        raise ValidationError("expected a mapping such as {cpu: 32, memory: 256GiB, gpu: 8}", field_name)
    reject_unknown_keys(dict(data), _AMOUNT_KEYS, field_name)
    gpu = parse_number(data.get("gpu", 0), f"{field_name}.gpu")
    if gpu < 0:
        raise ValidationError("GPU amount must not be negative", f"{field_name}.gpu")
    return ResourceVector(
        parse_cpu(data["cpu"], f"{field_name}.cpu") if "cpu" in data else missing,
        parse_memory(data["memory"], f"{field_name}.memory") if "memory" in data else missing,
        round(gpu * MILLI_PER_GPU) if "gpu" in data else missing,
    )


def parse_queue(name: str, data: Any) -> QueueSpec:
    """Parse a queue definition such as {guaranteed: {gpu: 8}, limit: {gpu: 16}, weight: 2, lend: true}."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ValidationError("expected a mapping with guaranteed, limit, weight, lend, strict_fifo", name)
    reject_unknown_keys(dict(data), _QUEUE_KEYS, name)
    limit = parse_amounts(data["limit"], "limit", missing=UNLIMITED) if data.get("limit") is not None else None
    flags = {}
    for key in ("lend", "strict_fifo"):
        if key in data:
            if not isinstance(data[key], bool):
                raise ValidationError("expected true or false", key)
            flags[key] = data[key]
    return QueueSpec(
        name=name,
        guaranteed=parse_amounts(data.get("guaranteed", {}), "guaranteed"),
        limit=limit,
        weight=parse_number(data.get("weight", 1.0), "weight"),
        **flags,
    )
