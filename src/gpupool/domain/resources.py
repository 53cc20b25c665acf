"""Resource quantities and the parsing of human units.

CPU is counted in milli-cores, memory in MiB, GPU in milli-GPU (1000 = one whole card). Users write
`cpu: 4` or `500m`, `memory: 16GiB`, `gpu: 2` (two whole cards on one node), `gpu: 0.5` (half of one card)
or `gpu: {count, share, memory, model, mig}`; the functions here turn those into exact integers and
reject nonsense with a message that says what is wrong and how to write it instead.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

# defined in display (light enough for the CLI's start) and re-exported here, where the core imports them from
from gpupool.domain.display import MILLI_PER_GPU as MILLI_PER_GPU  # noqa: PLC0414
from gpupool.domain.display import format_cpu as format_cpu  # noqa: PLC0414
from gpupool.domain.display import format_gpu as format_gpu  # noqa: PLC0414
from gpupool.domain.display import format_memory as format_memory  # noqa: PLC0414
from gpupool.domain.errors import ValidationError, reject_unknown_keys
from gpupool.domain.units import bytes_per, duration_seconds, split_quantity

MIB = 1
_MIG_PROFILE_RE = re.compile(r"^(\d+)g\.(\d+)gb$")
MAX_CPU_MILLI = 10_000_000  # 10,000 cores: anything above is a typo
MAX_MEMORY_MIB = 1024**3  # 1 PiB
MAX_GPUS_PER_REPLICA = 64
MAX_DURATION_S = 100 * 365 * 86400  # a century: longer than any run, small enough for exact integer arithmetic


class SharingMode(StrEnum):
    """How one GPU may be shared. `exclusive`: whole cards only. `shared`: time-slicing by share.
    `mps`: CUDA MPS clients by share. `mig`: hardware partitions (MIG instances) only."""

    EXCLUSIVE = "exclusive"
    SHARED = "shared"
    MPS = "mps"
    MIG = "mig"

    @property
    def allows_shares(self) -> bool:
        """True when fractional requests may be placed on a card in this mode."""
        return self in (SharingMode.SHARED, SharingMode.MPS)


@dataclass(frozen=True, slots=True)
class ResourceVector:
    """An amount of CPU (milli), memory (MiB) and GPU (milli). Supports +, -, and comparison helpers."""

    cpu_milli: int = 0
    memory_mib: int = 0
    gpu_milli: int = 0

    NAMES = ("cpu", "memory", "gpu")

    def __add__(self, other: ResourceVector) -> ResourceVector:
        return ResourceVector(
            self.cpu_milli + other.cpu_milli, self.memory_mib + other.memory_mib, self.gpu_milli + other.gpu_milli
        )

    def __sub__(self, other: ResourceVector) -> ResourceVector:
        return ResourceVector(
            self.cpu_milli - other.cpu_milli, self.memory_mib - other.memory_mib, self.gpu_milli - other.gpu_milli
        )

    def scaled(self, factor: int) -> ResourceVector:
        """This vector multiplied by an integer factor (e.g. a replica count)."""
        return ResourceVector(self.cpu_milli * factor, self.memory_mib * factor, self.gpu_milli * factor)

    def as_tuple(self) -> tuple[int, int, int]:
        """(cpu_milli, memory_mib, gpu_milli)."""
        return (self.cpu_milli, self.memory_mib, self.gpu_milli)

    def fits_within(self, limit: ResourceVector) -> bool:
        """True when every component is at most the matching component of `limit`."""
        return (self.cpu_milli <= limit.cpu_milli and self.memory_mib <= limit.memory_mib
                and self.gpu_milli <= limit.gpu_milli)

    def exceeding(self, limit: ResourceVector) -> tuple[str, ...]:
        """Names of the components larger than `limit`'s ("cpu", "memory", "gpu")."""
        # written out per component: the scheduler asks this several times per pending workload
        over: tuple[str, ...] = ()
        if self.cpu_milli > limit.cpu_milli:
            over += ("cpu",)
        if self.memory_mib > limit.memory_mib:
            over += ("memory",)
        if self.gpu_milli > limit.gpu_milli:
            over += ("gpu",)
        return over

    def clamp_low(self) -> ResourceVector:
        """This vector with negative components replaced by zero."""
        return ResourceVector(*(max(0, v) for v in self.as_tuple()))

    def dominant_share(self, total: ResourceVector) -> float:
        """max over resources of self/total (resources with zero total are ignored): the DRF share."""
        share = 0.0  # the largest of the shares below; 0 when every total is zero, as max(..., default=0.0) was
        first = True
        for used, whole in ((self.cpu_milli, total.cpu_milli), (self.memory_mib, total.memory_mib),
                            (self.gpu_milli, total.gpu_milli)):
            if whole > 0:
                ratio = used / whole
                if first or ratio > share:
                    share, first = ratio, False
        return share

    def describe(self) -> str:
        """Human form, e.g. '4 CPU, 16 GiB, 1.5 GPU'."""
        return f"{format_cpu(self.cpu_milli)} CPU, {format_memory(self.memory_mib)}, {format_gpu(self.gpu_milli)} GPU"


ZERO = ResourceVector()


def parse_number(value: Any, field_name: str) -> float:
    """A finite int or float as float; ValidationError for booleans, strings and NaN/inf."""
    if isinstance(value, bool):
        raise ValidationError("expected a number, got a boolean", field_name)
    if isinstance(value, int | float):
        if math.isnan(value) or math.isinf(value):
            raise ValidationError("expected a finite number", field_name)
        return float(value)
    raise ValidationError(f"expected a number, got {type(value).__name__} {value!r}", field_name)


def parse_cpu(value: Any, field_name: str = "cpu") -> int:
    """Parse CPU cores into milli-cores, exactly (decimal arithmetic, rounding up a fraction of a milli-core):
    4 -> 4000, 0.5 -> 500, "2.007" -> 2007, "500m" -> 500, "2" -> 2000."""
    if isinstance(value, str):
        text = value.strip()
        try:
            milli = Decimal(text[:-1]) if text.endswith("m") else Decimal(text) * 1000
        except InvalidOperation:
            raise ValidationError(f"cannot read {value!r} as CPU; write cores (4, 0.5) or milli-cores (500m)",
                                  field_name) from None
    else:
        milli = Decimal(repr(parse_number(value, field_name))) * 1000  # repr: the shortest exact decimal form
    if not milli.is_finite():
        raise ValidationError(f"CPU must be a finite number (got {value!r})", field_name)
    if milli < 0:
        raise ValidationError(f"CPU cannot be negative (got {value!r})", field_name)
    if milli > MAX_CPU_MILLI:
        raise ValidationError(f"{value!r} CPU is more than any machine has; check the unit", field_name)
    return math.ceil(milli)


def parse_memory(value: Any, field_name: str = "memory") -> int:
    """Parse a memory size into MiB, rounding up: "16GiB" -> 16384, "512Mi" -> 512, "1G" -> 954.

    Binary units (Ki, Mi, Gi, Ti, Pi, with or without a trailing B) and decimal units (K, M, G, T, P, KB, MB,
    GB...) are accepted (the grammar of `gpupool.domain.units`); a bare number is refused because its unit
    would be a guess.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value == 0:
            return 0
        if value < 0:
            raise ValidationError(f"memory cannot be negative (got {value!r})", field_name)
        raise ValidationError(f"memory {value!r} needs a unit, e.g. {value}GiB or {value}MiB", field_name)
    if not isinstance(value, str):
        raise ValidationError(f"expected a size such as 16GiB, got {value!r}", field_name)
    if value.strip().startswith("-"):
        raise ValidationError(f"memory cannot be negative (got {value!r})", field_name)
    quantity = split_quantity(value)
    if quantity is None:
        raise ValidationError(f"cannot read {value!r} as a size; write e.g. 16GiB, 512MiB or 1.5TB", field_name)
    amount, unit = quantity
    if not unit:
        raise ValidationError(f"memory {value!r} needs a unit, e.g. {value}GiB", field_name)
    factor = bytes_per(unit)
    if factor is None:
        raise ValidationError(f"unknown unit {unit!r} in {value!r}; use KiB, MiB, GiB, TiB or KB, MB, "
                              "GB, TB", field_name)
    mib = amount * factor / 2**20
    if mib > MAX_MEMORY_MIB:
        raise ValidationError(f"{value!r} is more memory than any machine has; check the unit", field_name)
    return math.ceil(mib - 1e-9)


def parse_duration(value: Any, field_name: str = "duration") -> int:
    """Parse a duration into whole seconds: 90 -> 90, "90s", "30m", "6h", "1h30m", "2d" (the grammar of
    `gpupool.domain.units`; a number in a string needs its unit). ValidationError for anything else, for NaN
    and infinity, and beyond MAX_DURATION_S."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        found = duration_seconds(value, bare_unit="")
        if found is None:
            raise ValidationError(f"cannot read {value!r} as a duration; write e.g. 90s, 30m, 6h or 1h30m",
                                  field_name)
        seconds = found
    else:
        raise ValidationError(f"expected a duration such as 6h, got {value!r}", field_name)
    if not math.isfinite(seconds) or seconds > MAX_DURATION_S:
        raise ValidationError(f"a duration must be finite and at most {MAX_DURATION_S // (365 * 86400)} years "
                              f"(got {value!r})", field_name)
    if seconds <= 0:
        raise ValidationError(f"a duration must be positive (got {value!r})", field_name)
    return math.ceil(seconds)


def mig_profile_slices(profile: str) -> tuple[int, int]:
    """(compute slices, memory in GB) of a MIG profile name such as '3g.40gb'; ValidationError otherwise."""
    match = _MIG_PROFILE_RE.match(profile.strip().lower())
    if not match:
        raise ValidationError(f"{profile!r} is not a MIG profile; write e.g. 1g.10gb or 3g.40gb", "gpu.mig")
    return int(match.group(1)), int(match.group(2))


def normalise_model(model: str) -> str:
    """Canonical GPU model name for matching: upper case, no vendor prefix, dashes for spaces."""
    text = model.strip().upper()
    for prefix in ("NVIDIA ", "TESLA "):
        text = text.removeprefix(prefix)
    return "-".join(text.split())


def model_matches(requested: str, actual: str) -> bool:
    """True when a requested model name selects the card model `actual`.

    Exact (case-insensitive) names match; a requested family such as "A100" also matches "A100-SXM4-80GB"
    (a dash-separated prefix), but "V100" does not match "V100M16".
    """
    want, have = normalise_model(requested), normalise_model(actual)
    return have == want or have.startswith(want + "-")


@dataclass(frozen=True, slots=True)
class GpuRequest:
    """The GPU part of one replica's request; at most one of whole / share / mig is set.

    - whole: `count` >= 1 full cards on one node (each with at least `min_memory_mib` of memory, if set);
    - share: a part of one card, `share_milli` of compute (1..999) and/or `share_memory_mib` of its memory;
    - mig: `count` instances of the MIG profile `mig_profile` on one node.
    `models` restricts the card models (empty: any).
    """

    count: int = 0
    share_milli: int = 0
    share_memory_mib: int = 0
    min_memory_mib: int = 0
    models: tuple[str, ...] = ()
    mig_profile: str | None = None

    @property
    def kind(self) -> str:
        """'none', 'whole', 'share' or 'mig'."""
        if self.mig_profile:
            return "mig"
        if self.share_milli or self.share_memory_mib:
            return "share"
        return "whole" if self.count else "none"

    @property
    def is_none(self) -> bool:
        """True for CPU-only work."""
        return self.kind == "none"

    def nominal_milli(self, card_memory_mib: int | None = None) -> int:
        """GPU milli this request counts against quotas. A share sized by memory alone takes
        `memory_share_milli(memory, card memory)` of the card it lands on: pass the memory of the card (or,
        before placement, of the largest card it may use, its smallest possible milli); without a card it
        counts 0. MIG instances count `mig_instance_milli` each."""
        kind = self.kind
        if kind == "whole":
            return self.count * MILLI_PER_GPU
        if kind == "share":
            if self.share_milli or card_memory_mib is None:
                return self.share_milli
            return memory_share_milli(self.share_memory_mib, card_memory_mib)
        if kind == "mig" and self.mig_profile:
            return self.count * mig_instance_milli(self.mig_profile)
        return 0

    def allows_model(self, model: str) -> bool:
        """True when `model` is one of the allowed models (or any model is allowed)."""
        return not self.models or any(model_matches(m, model) for m in self.models)

    def describe(self) -> str:
        """Human form, e.g. '2 GPU (A100|H100)', '0.5 GPU + 10 GiB', 'MIG 1g.10gb'."""
        kind = self.kind
        if kind == "none":
            return "no GPU"
        if kind == "whole":
            text = f"{self.count} GPU"
        elif kind == "mig":
            text = f"{self.count} x MIG {self.mig_profile}"
        else:
            parts = [f"{format_gpu(self.share_milli)} GPU"] if self.share_milli else []
            parts += [f"{format_memory(self.share_memory_mib)} GPU memory"] if self.share_memory_mib else []
            text = " + ".join(parts)
        return text + (f" ({'|'.join(self.models)})" if self.models else "")


NO_GPU = GpuRequest()


def memory_share_milli(memory_mib: int, card_memory_mib: int) -> int:
    """The one conversion of a share sized by GPU memory into milli-GPU: ceil(memory / card memory * 1000),
    at most one card (placement, quotas, preemption and reclaim all use it)."""
    return min(MILLI_PER_GPU, -(-memory_mib * MILLI_PER_GPU // max(card_memory_mib, 1)))


def mig_slice_milli(slices: int, compute_slices_per_gpu: int = 7) -> int:
    """GPU milli of a MIG instance of `slices` compute slices: floor(slices * 1000 / slices per card).
    Rounded down so that the instances of one card never add up to more than the card (7 x 1g = 994 milli,
    a full 7g = 1000): a queue limit of 1 GPU admits all seven 1g instances of a card."""
    return slices * MILLI_PER_GPU // compute_slices_per_gpu


def mig_instance_milli(profile: str, compute_slices_per_gpu: int = 7) -> int:
    """GPU milli one MIG instance of `profile` counts as (`mig_slice_milli` of its compute slices; 7 per card
    on A100/H100)."""
    slices, _ = mig_profile_slices(profile)
    return mig_slice_milli(slices, compute_slices_per_gpu)


_GPU_KEYS = ("count", "share", "memory", "model", "mig")


def parse_gpu(value: Any, field_name: str = "gpu") -> GpuRequest:
    """Parse the `gpu:` field of a request.

    `2` -> two whole cards; `0.5` or "500m" -> a half share of one card; `0` -> none;
    `{count: 2, model: [A100, H100]}`, `{share: 0.25, memory: 10GiB}`, `{memory: 10GiB}` (a share sized by
    memory), `{count: 1, memory: 40GiB}` (a whole card with at least 40 GiB), `{mig: 1g.10gb, count: 2}`.
    """
    if isinstance(value, Mapping):
        return _parse_gpu_mapping(dict(value), field_name)
    return _parse_gpu_amount(value, field_name)


def _parse_gpu_amount(value: Any, field_name: str) -> GpuRequest:
    if isinstance(value, str):
        text = value.strip()
        try:
            amount = float(text[:-1]) / MILLI_PER_GPU if text.endswith("m") else float(text)
        except ValueError:
            raise ValidationError(f"cannot read {value!r} as GPUs; write 2 (whole cards), 0.5 (a share of one "
                                  "card) or a mapping such as {count: 2, model: A100}", field_name) from None
    else:
        amount = parse_number(value, field_name)
    if amount < 0:
        raise ValidationError(f"a GPU amount cannot be negative (got {value!r})", field_name)
    if amount == 0:
        return NO_GPU
    if amount < 1:
        milli = round(amount * MILLI_PER_GPU)
        if milli == MILLI_PER_GPU:
            raise ValidationError(f"a GPU share of {value!r} rounds to a whole card; write 1 for a whole GPU",
                                  field_name)
        if milli == 0:
            raise ValidationError(f"a GPU share of {value!r} rounds to 0 milli-GPU; the smallest share is 0.001",
                                  field_name)
        return GpuRequest(share_milli=milli)
    if amount != int(amount):
        raise ValidationError(f"{value!r} GPUs: a fraction must be below 1 (a share of one card) or a whole "
                              "number of cards", field_name)
    return _whole(int(amount), field_name)


def _whole(count: int, field_name: str, **extra: Any) -> GpuRequest:
    if count > MAX_GPUS_PER_REPLICA:
        raise ValidationError(f"{count} GPUs in one replica is more than any node has; split the work into "
                              "replicas", field_name)
    return GpuRequest(count=count, **extra)


def _parse_models(value: Any, field_name: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items or not all(isinstance(m, str) and m.strip() for m in items):
        raise ValidationError("expected a model name or a list of model names, e.g. [A100, H100]", field_name)
    return tuple(sorted({m.strip() for m in items}))


def _parse_gpu_mapping(data: dict[str, Any], field_name: str) -> GpuRequest:
    reject_unknown_keys(data, _GPU_KEYS, field_name)
    models = _parse_models(data["model"], f"{field_name}.model") if "model" in data else ()
    count = data.get("count")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        raise ValidationError(f"count must be a whole number of cards (got {count!r})", f"{field_name}.count")
    if "mig" in data:
        return _parse_mig(data, models, field_name)
    memory = parse_memory(data["memory"], f"{field_name}.memory") if "memory" in data else 0
    if "memory" in data and memory == 0:
        raise ValidationError("a GPU memory request must be more than 0", f"{field_name}.memory")
    if "share" in data or (memory and count is None):
        share = _parse_gpu_amount(data.get("share", 0), f"{field_name}.share") if "share" in data else NO_GPU
        if share.kind == "whole" or (count is not None and count != 1):
            raise ValidationError("a share is part of one card: share must be below 1 and count 1 (or absent)",
                                  field_name)
        if "share" in data and share.is_none:
            raise ValidationError("a zero-size share asks for nothing; remove gpu or give a share above 0",
                                  f"{field_name}.share")
        return GpuRequest(share_milli=share.share_milli, share_memory_mib=memory, models=models)
    count = 1 if count is None else count
    if count == 0:
        if models:
            raise ValidationError("a GPU model was given with count 0; remove model or ask for a GPU", field_name)
        return NO_GPU
    return _whole(count, field_name, min_memory_mib=memory, models=models)


def _parse_mig(data: dict[str, Any], models: tuple[str, ...], field_name: str) -> GpuRequest:
    if "share" in data or "memory" in data:
        raise ValidationError("a MIG profile already fixes compute and memory; remove share/memory",
                              f"{field_name}.mig")
    profile = str(data["mig"]).strip().lower()
    mig_profile_slices(profile)
    count = data.get("count", 1)
    if count < 1:
        raise ValidationError("ask for at least one MIG instance", f"{field_name}.count")
    return GpuRequest(count=count, mig_profile=profile, models=models)


@dataclass(frozen=True, slots=True)
class ReplicaRequest:
    """What one replica needs from a node: CPU, memory, GPU, and node constraints.

    `node_selector` pairs must all be node labels; `tolerations` names the taint keys this replica accepts.
    """

    cpu_milli: int = 0
    memory_mib: int = 0
    gpu: GpuRequest = NO_GPU
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[str, ...] = field(default=())

    def nominal(self, card_memory_mib: int | None = None) -> ResourceVector:
        """The request as a ResourceVector (GPU at its nominal milli; see GpuRequest.nominal_milli)."""
        return ResourceVector(self.cpu_milli, self.memory_mib, self.gpu.nominal_milli(card_memory_mib))

    def describe(self) -> str:
        """Human form, e.g. '4 CPU, 16 GiB, 1 GPU (A100)'."""
        return f"{format_cpu(self.cpu_milli)} CPU, {format_memory(self.memory_mib)}, {self.gpu.describe()}"


_REQUEST_KEYS = ("cpu", "memory", "gpu")


def parse_request(data: Any, field_name: str = "resources") -> ReplicaRequest:
    """Parse a `resources:` mapping such as {cpu: 4, memory: 16GiB, gpu: 1} into a ReplicaRequest."""
    if data is None:
        return ReplicaRequest()
    if not isinstance(data, Mapping):
        raise ValidationError("expected a mapping such as {cpu: 4, memory: 16GiB, gpu: 1}", field_name)
    reject_unknown_keys(dict(data), _REQUEST_KEYS, field_name)
    return ReplicaRequest(
        cpu_milli=parse_cpu(data.get("cpu", 0), f"{field_name}.cpu"),
        memory_mib=parse_memory(data.get("memory", 0), f"{field_name}.memory"),
        gpu=parse_gpu(data.get("gpu", 0), f"{field_name}.gpu"),
    )
