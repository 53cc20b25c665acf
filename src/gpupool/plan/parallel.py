"""Parallel layouts: candidate tensor/pipeline/data-parallel splits and ZeRO stages, smallest first.

"Smallest" means the least model parallelism (tp x pp), then the lowest ZeRO stage (least extra
communication), then fewer pipeline stages (pipelines idle in their bubble; tensor parallelism stays
inside a node's NVLink domain). Ties never depend on iteration order: the sort key is total.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gpupool.plan.errors import PlanInputError
from gpupool.plan.memory import Layout
from gpupool.plan.models import ModelShape


@dataclass(frozen=True)
class LayoutConstraints:
    """Layout sizes the user fixed (``None``: the planner chooses) and the GPUs of one node."""

    tp: int | None = None
    pp: int | None = None
    zero: int | None = None
    sequence_parallel: bool = True
    gpus_per_node: int = 8


def _powers_of_two(limit: int) -> list[int]:
    values, value = [], 1
    while value <= limit:
        values.append(value)
        value *= 2
    return values


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _check_fixed(gpus: int, model: ModelShape, fixed: LayoutConstraints) -> None:
    for name in ("tp", "pp"):
        value = getattr(fixed, name)
        if value is not None and value < 1:
            raise PlanInputError(f"--{name} must be at least 1, got {value}")
    if fixed.gpus_per_node < 1:
        raise PlanInputError(f"--gpus-per-node must be at least 1, got {fixed.gpus_per_node}")
    heads, layers = model.heads or 1, model.layers or 1
    if fixed.tp is not None and heads % fixed.tp:
        raise PlanInputError(f"--tp {fixed.tp} does not divide the model's {heads} attention heads")
    if fixed.pp is not None and fixed.pp > layers:
        raise PlanInputError(f"--pp {fixed.pp} is more pipeline stages than the model's {layers} layers")
    split = (fixed.tp or 1) * (fixed.pp or 1)
    if gpus % split:
        raise PlanInputError(f"{gpus} GPUs cannot be split into tp x pp = {split}: not a multiple")


def candidate_layouts(gpus: int, model: ModelShape, fixed: LayoutConstraints) -> list[Layout]:
    """Every layout of ``gpus`` GPUs that respects ``fixed``, smallest first (see the module docstring).

    Tensor parallelism takes powers of two up to one node that divide the attention heads; pipeline
    stages divide the rest and are at most the number of layers; ZeRO stages above 0 only when data
    parallel ranks exist. Raises PlanInputError when a fixed size is impossible.
    """
    _check_fixed(gpus, model, fixed)
    heads, layers = model.heads or 1, model.layers or 1
    tps = [fixed.tp] if fixed.tp else [
        t for t in _powers_of_two(min(fixed.gpus_per_node, gpus)) if heads % t == 0 and gpus % t == 0
    ]
    layouts = []
    for tp in tps:
        pps = [fixed.pp] if fixed.pp else [p for p in _divisors(gpus // tp) if p <= layers]
        for pp in pps:
            if gpus % (tp * pp):
                continue
            dp = gpus // (tp * pp)
            zeros = [fixed.zero] if fixed.zero is not None else ([0, 1, 2, 3] if dp > 1 else [0])
            layouts += [Layout(tp, pp, dp, z, fixed.sequence_parallel) for z in zeros]
    return sorted(layouts, key=lambda lay: (lay.tp * lay.pp, lay.zero, lay.pp, lay.tp))


def first_fitting(
    layouts: list[Layout], memory_of: Callable[[Layout], float], budget: float
) -> tuple[Layout, float] | None:
    """The first layout whose memory (``memory_of``) is within ``budget`` bytes, with that memory."""
    for layout in layouts:
        needed = memory_of(layout)
        if needed <= budget:
            return layout, needed
    return None


def least_memory(layouts: list[Layout], memory_of: Callable[[Layout], float]) -> tuple[Layout, float]:
    """The layout needing the least memory per GPU (the first such in order), with that memory."""
    if not layouts:
        raise PlanInputError("no parallel layout is possible with these constraints")
    scored = [(memory_of(layout), i, layout) for i, layout in enumerate(layouts)]
    needed, _, layout = min(scored)
    return layout, needed


def powers_of_two_up_to(limit: int) -> list[int]:
    """1, 2, 4, ... up to ``limit``: the GPU counts tried when looking for the fewest that fit."""
    return _powers_of_two(limit)
