"""`plan mig`: how many MIG instances of a given size fit one GPU, and which profile fits a request.

A MIG-capable GPU divides into C = 7 compute slices and M = 8 memory slices (NVIDIA Multi-Instance
GPU User Guide, "Concepts" and "Supported MIG Profiles"). A request for S SMs needs
c = ceil(S / SMs per slice) compute slices; a request for memory needs the memory slices m of the
smallest profile that holds it (each slice holds memory / 8). At most min(floor(C / c), floor(M / m))
such instances fit one GPU; the profile table's "instances" column gives the same figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gpupool.plan.catalog import GpuSpec, MigGeometry, MigProfile
from gpupool.plan.errors import PlanInputError
from gpupool.plan.report import Report, Table, Term, Unit
from gpupool.plan.units import GIB, format_bytes

MIG_SOURCE = "NVIDIA Multi-Instance GPU User Guide, Supported MIG Profiles"


@dataclass(frozen=True)
class MigRequest:
    """The size of one instance: SMs or compute slices (or both), and memory in bytes; all optional."""

    sms: int | None = None
    slices: int | None = None
    memory_bytes: float | None = None


def _geometry(gpu: GpuSpec) -> MigGeometry:
    if gpu.mig is None:
        raise PlanInputError(
            f"{gpu.name} does not support MIG (no MIG profiles in the catalog); MIG runs on A100, A30, "
            "H100, H200, H20 and later data-centre GPUs"
        )
    return gpu.mig


def compute_slices_needed(geometry: MigGeometry, request: MigRequest, gpu_name: str) -> tuple[int, str]:
    """Compute slices for the request and how they were found: ceil(SMs / SMs per slice), or --slices."""
    needed, words = 1, "none asked: 1"
    if request.sms is not None:
        if request.sms < 1:
            raise PlanInputError(f"--sm must be at least 1, got {request.sms}")
        if geometry.sms_per_slice is None:
            raise PlanInputError(f"the SMs per MIG slice of {gpu_name} are not in the catalog; give --slices")
        needed = math.ceil(request.sms / geometry.sms_per_slice)
        words = f"ceil({request.sms} SMs / {geometry.sms_per_slice} SMs per slice)"
    if request.slices is not None:
        if not 1 <= request.slices <= geometry.compute_slices:
            raise PlanInputError(
                f"--slices must be between 1 and {geometry.compute_slices}, got {request.slices}"
            )
        if request.slices >= needed:
            needed, words = request.slices, "given (--slices)"
    return needed, words


def memory_slices_needed(geometry: MigGeometry, memory_bytes: float | None) -> int | None:
    """Memory slices of the smallest profile holding ``memory_bytes``.

    1 when no memory is asked; ``None`` when no profile holds that much.
    """
    if memory_bytes is None:
        return 1
    holding = [p.memory_slices for p in geometry.profiles if p.nominal_memory_gib * GIB >= memory_bytes]
    return min(holding) if holding else None


def choose_profile(geometry: MigGeometry, compute: int, memory: int) -> MigProfile | None:
    """The smallest profile (fewest compute, then memory slices) with at least the slices asked."""
    fitting = [p for p in geometry.profiles if p.compute_slices >= compute and p.memory_slices >= memory]
    return min(fitting, key=lambda p: (p.compute_slices, p.memory_slices, p.name)) if fitting else None


def _profile_table(gpu: GpuSpec, geometry: MigGeometry, chosen: MigProfile | None) -> Table:
    rows = []
    for p in geometry.profiles:
        sms = str(p.compute_slices * geometry.sms_per_slice) if geometry.sms_per_slice else "?"
        mark = "<- fits" if chosen is not None and p.name == chosen.name else ""
        rows.append((p.name, str(p.compute_slices), sms, str(p.memory_slices), f"{p.nominal_memory_gib} GiB",
                     str(p.instances), mark))
    return Table(f"MIG profiles of {gpu.name}",
                 ("profile", "compute slices", "SMs", "memory slices", "memory", "per GPU", ""), tuple(rows))


def plan_mig(gpu: GpuSpec, request: MigRequest) -> Report:
    """Answer a MIG question: slices needed, instances per GPU, the smallest profile that fits.

    Raises PlanInputError when the GPU has no MIG or an input is out of range; a request larger than
    any profile is an answer (``fits`` false), not an error.
    """
    geometry = _geometry(gpu)
    if request.sms is None and request.slices is None and request.memory_bytes is None:
        raise PlanInputError("give the instance size: --sm or --slices, and/or --memory")
    if request.memory_bytes is not None and not 0 < request.memory_bytes < math.inf:
        raise PlanInputError(f"--memory must be positive, got {request.memory_bytes}")
    if request.sms is not None and gpu.sm_count is not None and request.sms > gpu.sm_count:
        raise PlanInputError(f"the {gpu.name} has {gpu.sm_count} SMs; --sm {request.sms} is more than the whole "
                             "GPU, and a MIG instance is a part of one")
    compute, compute_words = compute_slices_needed(geometry, request, gpu.name)
    memory = memory_slices_needed(geometry, request.memory_bytes)
    slice_bytes = gpu.memory_bytes / geometry.memory_slices
    chosen = choose_profile(geometry, compute, memory) if memory is not None else None
    terms = [
        Term("sm_count", "SMs on the GPU", gpu.sm_count, Unit.COUNT, "datasheet", gpu.source)
    ] if gpu.sm_count else []
    terms += [
        Term("compute_slices", "Compute slices needed", compute, Unit.COUNT, compute_words, MIG_SOURCE),
        Term("slice_memory", "Memory per memory slice", slice_bytes, Unit.BYTES,
             f"{gpu.memory_gib:g} GiB / {geometry.memory_slices}", MIG_SOURCE),
    ]
    summary: dict[str, Any] = {"fits": chosen is not None, "profile": chosen.name if chosen else None}
    if memory is None:
        largest = max(p.nominal_memory_gib for p in geometry.profiles)
        asked = format_bytes(request.memory_bytes or 0)
        notes = [f"No profile holds {asked}: the largest has {largest} GiB."]
        return _report(gpu=gpu, geometry=geometry, terms=terms, summary=summary, notes=notes, chosen=None)
    by_compute = geometry.compute_slices // compute
    by_memory = geometry.memory_slices // memory
    terms += [
        Term("memory_slices", "Memory slices needed", memory, Unit.COUNT,
             "those of the smallest profile holding the memory" if request.memory_bytes else "none asked: 1",
             MIG_SOURCE),
        Term("by_compute", "Instances by compute", by_compute, Unit.COUNT,
             f"floor({geometry.compute_slices} / {compute})", MIG_SOURCE),
        Term("by_memory", "Instances by memory", by_memory, Unit.COUNT,
             f"floor({geometry.memory_slices} / {memory})", MIG_SOURCE),
        Term("instances", "Instances per GPU", min(by_compute, by_memory), Unit.COUNT,
             "min(by compute, by memory)", MIG_SOURCE),
    ]
    summary["instances"] = min(by_compute, by_memory)
    notes = _notes(chosen, compute, memory)
    return _report(gpu=gpu, geometry=geometry, terms=terms, summary=summary, notes=notes, chosen=chosen)


def _notes(chosen: MigProfile | None, compute: int, memory: int) -> list[str]:
    if chosen is None:
        return [f"No profile has {compute} compute and {memory} memory slices."]
    notes = [f"Smallest profile that fits: {chosen.name}, {chosen.instances} per GPU (profile table)."]
    notes.append("Profile memory is the nominal size of its name; the driver reports a few hundred MiB less.")
    return notes


def _report(
    *,
    gpu: GpuSpec, geometry: MigGeometry, terms: list[Term], summary: dict[str, Any], notes: list[str],
    chosen: MigProfile | None,
) -> Report:
    headline = (f"{chosen.instances} x {chosen.name} per GPU" if chosen else "no profile fits")
    return Report(
        title=f"MIG on {gpu.name}: {headline}",
        inputs={"gpu": gpu.name},
        terms=terms, summary=summary, notes=notes, tables=(_profile_table(gpu, geometry, chosen),),
    )
