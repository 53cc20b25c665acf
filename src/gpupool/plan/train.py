"""`plan train`: memory per GPU, a parallel layout that fits, and compute and time for a token budget."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from gpupool.plan import compute
from gpupool.plan.catalog import GpuCount
from gpupool.plan.errors import PlanInputError
from gpupool.plan.memory import (
    Layout,
    Optimizer,
    Recompute,
    TrainingSetup,
    activation_terms,
    model_state_terms,
    training_memory_bytes,
)
from gpupool.plan.models import ModelShape
from gpupool.plan.parallel import (
    LayoutConstraints,
    candidate_layouts,
    first_fitting,
    least_memory,
    powers_of_two_up_to,
)
from gpupool.plan.precision import Precision
from gpupool.plan.report import Report, Term, Unit
from gpupool.plan.units import format_bytes, format_count

MAX_GPUS_SEARCHED = 16384
LOWER_BOUND_NOTE = (
    "Memory figures are lower bounds: frameworks add communication buffers, allocator fragmentation "
    "and the CUDA context; the usable fraction (--memory-fraction) leaves room for them."
)


@dataclass(frozen=True)
class TrainRequest:
    """A training sizing question: model, GPUs, batch shape, formats, layout constraints, budget."""

    model: ModelShape
    gpus: GpuCount
    seq: int
    micro_batch: int = 1
    precision: Precision = Precision.BF16
    optimizer: Optimizer = Optimizer.ADAM
    recompute: Recompute = Recompute.SELECTIVE
    constraints: LayoutConstraints = field(default_factory=LayoutConstraints)
    memory_fraction: float = 0.9
    tokens: float | None = None
    mfu: float = 0.4
    deadline_seconds: float | None = None

    def setup(self, layout: Layout) -> TrainingSetup:
        """The memory question for one layout."""
        return TrainingSetup(
            model=self.model, seq=self.seq, micro_batch=self.micro_batch, precision=self.precision,
            optimizer=self.optimizer, recompute=self.recompute, layout=layout,
        )


def _check(request: TrainRequest) -> None:
    if request.seq < 1 or request.micro_batch < 1:
        raise PlanInputError("--seq and --micro-batch must be at least 1")
    if not 0 < request.memory_fraction <= 1:
        raise PlanInputError(f"--memory-fraction must be in (0, 1], got {request.memory_fraction}")
    for name, value in (("--tokens", request.tokens), ("--deadline", request.deadline_seconds)):
        if value is not None and not 0 < value < math.inf:
            raise PlanInputError(f"{name} must be positive, got {value}")
    request.model.require_shape("training memory (activations)")


def choose_layout(request: TrainRequest, gpus: int) -> tuple[Layout, float, bool]:
    """The smallest layout of ``gpus`` GPUs that fits, or the one needing least memory if none fits.

    Returns the layout, its bytes per GPU and whether it fits the usable memory.
    """
    layouts = candidate_layouts(gpus, request.model, request.constraints)
    budget = request.gpus.gpu.memory_bytes * request.memory_fraction

    def memory_of(layout: Layout) -> float:
        return training_memory_bytes(request.setup(layout))

    found = first_fitting(layouts, memory_of, budget)
    if found is not None:
        return found[0], found[1], True
    layout, needed = least_memory(layouts, memory_of)
    return layout, needed, False


def fewest_gpus_that_fit(request: TrainRequest) -> int | None:
    """The fewest GPUs (powers of two) of the requested model on which some layout fits, if any."""
    for count in powers_of_two_up_to(MAX_GPUS_SEARCHED):
        try:
            if choose_layout(request, count)[2]:
                return count
        except PlanInputError:
            continue
    return None


def _compute_terms(request: TrainRequest) -> tuple[list[Term], dict[str, Any], list[str]]:
    if request.tokens is None:
        return [], {}, []
    gpu, n = request.gpus.gpu, request.gpus.count
    peak, field = gpu.peak_flops(request.precision)
    flops = compute.training_flops(request.model.active, request.tokens, request.recompute)
    seconds = compute.training_seconds(flops.value, n, peak, request.mfu)
    at_full = compute.training_seconds(flops.value, n, peak, 1.0)
    terms = [
        flops, compute.pf_days(flops.value),
        Term("peak", f"Peak per GPU ({field.split('_')[0]})", peak, Unit.FLOPS,
             f"{gpu.name} datasheet, dense", gpu.source),
        Term("time", f"Time at {request.mfu:.0%} MFU", seconds, Unit.SECONDS,
             f"FLOPs / ({n} GPUs x peak x {request.mfu:g})", compute.FLOPS_SOURCE),
        Term("time_full_mfu", "Time at 100% MFU", at_full, Unit.SECONDS, f"FLOPs / ({n} GPUs x peak)",
             compute.FLOPS_SOURCE),
    ]
    summary: dict[str, Any] = {"flops": flops.value, "seconds": seconds, "seconds_at_full_mfu": at_full}
    if request.deadline_seconds is not None:
        needed = compute.gpus_for_deadline(flops.value, request.deadline_seconds, peak, request.mfu)
        terms.append(Term("gpus_for_deadline", "GPUs for the deadline", needed, Unit.COUNT,
                          "ceil(FLOPs / (deadline x peak x MFU))", compute.FLOPS_SOURCE))
        summary["gpus_for_deadline"] = needed
    notes = [] if field.startswith(request.precision.value) else [
        f"{gpu.name} has no {request.precision} peak in the catalog; the {field} peak is used."
    ]
    return terms, summary, notes


def _params_term(model: ModelShape) -> Term:
    return Term("params", "Parameters", model.params, Unit.COUNT, model.params_origin, model.source)


def plan_training(request: TrainRequest) -> Report:
    """Answer a training question: memory per GPU term by term, whether it fits, the layout, the time.

    Layout sizes not fixed in ``request.constraints`` are chosen (the smallest layout that fits);
    raises PlanInputError for missing or inconsistent inputs.
    """
    _check(request)
    gpu, n = request.gpus.gpu, request.gpus.count
    layout, needed, fits = choose_layout(request, n)
    setup = request.setup(layout)
    budget = gpu.memory_bytes * request.memory_fraction
    terms = [_params_term(request.model), *model_state_terms(request.model.params, setup),
             *activation_terms(setup)]
    terms += [
        Term("total", "Total per GPU", needed, Unit.BYTES, "weights + gradients + optimizer + activations"),
        Term("usable", f"Usable on one {gpu.name}", budget, Unit.BYTES,
             f"{gpu.memory_gib:g} GiB x {request.memory_fraction:g}", gpu.source),
    ]
    compute_terms, compute_summary, notes = _compute_terms(request)
    summary: dict[str, Any] = {
        "fits": fits, "bytes_per_gpu": needed, "usable_bytes_per_gpu": budget, "layout": asdict(layout),
        "layout_label": layout.label, **compute_summary,
    }
    notes = _layout_notes(request, layout, needed, fits, summary) + notes + [LOWER_BOUND_NOTE]
    if request.model.estimated:
        m = request.model
        notes.insert(0, f"Model shape estimated from {format_count(m.params)} parameters: {m.layers} layers, "
                        f"hidden {m.hidden}, {m.heads} heads. Give --model or --layers/--hidden/--heads "
                        "for exact activations.")
    return Report(
        title=f"Training {request.model.name} on {request.gpus.label}: {layout.label}",
        inputs=_inputs(request), terms=terms + compute_terms, summary=summary, notes=notes,
    )


def _layout_notes(
    request: TrainRequest, layout: Layout, needed: float, fits: bool, summary: dict[str, Any]
) -> list[str]:
    gpu = request.gpus.gpu
    if fits:
        return [f"Fits: {format_bytes(needed)} of {format_bytes(gpu.memory_bytes)} per GPU "
                f"with {layout.label}."]
    fewest = fewest_gpus_that_fit(request)
    summary["fewest_gpus_that_fit"] = fewest
    more = (f" The fewest {gpu.name} on which a layout fits: {fewest}." if fewest else
            " No layout fits on any number of these GPUs; try --recompute full or a smaller --micro-batch.")
    return [f"Does not fit: the best layout ({layout.label}) needs {format_bytes(needed)} per GPU, "
            f"more than {format_bytes(gpu.memory_bytes * request.memory_fraction)} usable.{more}"]


def _inputs(request: TrainRequest) -> dict[str, Any]:
    c = request.constraints
    return {
        "model": request.model.name, "params": request.model.params, "active_params": request.model.active,
        "layers": request.model.layers, "hidden": request.model.hidden, "heads": request.model.heads,
        "gpus": request.gpus.count, "gpu": request.gpus.gpu.name, "seq": request.seq,
        "micro_batch": request.micro_batch, "precision": str(request.precision),
        "optimizer": str(request.optimizer), "recompute": str(request.recompute),
        "tp": c.tp, "pp": c.pp, "zero": c.zero, "sequence_parallel": c.sequence_parallel,
        "memory_fraction": request.memory_fraction, "tokens": request.tokens, "mfu": request.mfu,
        "deadline_seconds": request.deadline_seconds,
    }

