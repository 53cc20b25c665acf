"""The one grammar of GPU specs such as `4xA100-80GB`, `8 x H100` or `H100`: a count (optional where the
caller allows) and a GPU name, which may end in its memory (`-80GB`). Used by `gpupool up --gpus` (declared
simulated GPUs) and by the planner's `--gpus`; the memory of a name without one comes from the planner's
GPU catalog (`gpupool.plan.gpu_catalog.yaml`), the one table of GPU memory sizes."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gpupool.domain.errors import ValidationError

_GPU_SPEC = re.compile(r"\s*(?:(?P<count>\d+)\s*[xX*]\s*)?(?P<name>\S.*?)\s*")
_MEMORY_SUFFIX = re.compile(r"^(?P<base>.+?)-(?P<gb>\d+(?:\.\d+)?)\s*(?:GB|G|GIB)$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class GpuCountSpec:
    """`count` GPUs named `name`; `count_given` is False when the text named a GPU without a count (one)."""

    count: int
    name: str
    count_given: bool


def parse_gpu_count(text: str, what: str = "gpus", count_required: bool = False) -> GpuCountSpec:
    """Read `COUNTxNAME` (`8xA100-80GB`, `8 x H100`, `8*T4`) or, unless `count_required`, `NAME` alone.
    ValidationError naming `what` when it cannot be read or the count is 0."""
    match = _GPU_SPEC.fullmatch(text or "")
    if match is None or not match["name"] or (count_required and match["count"] is None):
        example = "8xA100-80GB"
        raise ValidationError(f"cannot read {text!r}; write COUNTxGPU, e.g. {example}", what)
    count = int(match["count"]) if match["count"] else 1
    if count < 1:
        raise ValidationError(f"the GPU count in {text!r} must be at least 1", what)
    return GpuCountSpec(count, match["name"], match["count"] is not None)


def memory_in_name(name: str) -> tuple[str, float] | None:
    """(`A100`, 80.0) for `A100-80GB` (also `-80G`, `-80GiB`): the name without its memory and the memory in
    GiB (NVIDIA's "80GB" cards hold 80 GiB); None when the name does not end in a memory size."""
    match = _MEMORY_SUFFIX.fullmatch(name.strip())
    return (match["base"], float(match["gb"])) if match else None
