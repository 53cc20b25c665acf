"""`plan serve`: memory of an inference replica, GPUs per replica, and latency and throughput bounds.

- Weights: parameters x bytes per parameter of the weight format.
- KV cache per token: 2 x layers x kv_heads x head_dim x bytes (keys and values of every layer; grouped-
  and multi-query attention cache kv_heads < heads; Ainslie et al. 2023, Shazeer 2019). Models with
  multi-head latent attention cache kv_cache_dim elements per layer instead (DeepSeek-V2/V3).
- Decoding one token reads every active weight once, so its latency is at least
  active weight bytes / memory bandwidth (memory-bound regime; Pope et al. 2022, "Efficiently Scaling
  Transformer Inference", section 2). With tensor parallelism the GPUs read their shards at once.
- At a batch of B sequences a decode step reads the weights once and each sequence's KV cache, and
  does 2 N_active FLOPs per sequence: step >= max(bytes / bandwidth, 2 N_active B / peak), and
  tokens/s <= B / step.
- Prefill of P prompt tokens is compute-bound: P (2 N_active + 2 L P d_attn) FLOPs (Kaplan et al.
  2020, Table 1, forward pass) at the GPUs' peak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gpupool.plan.catalog import GpuSpec
from gpupool.plan.errors import PlanInputError
from gpupool.plan.models import ModelShape
from gpupool.plan.precision import Precision
from gpupool.plan.report import Report, Term, Unit
from gpupool.plan.units import format_bytes, format_count

KV_SOURCE = "Pope et al. 2022, section 2; GQA: Ainslie et al. 2023; MQA: Shazeer 2019"
DECODE_SOURCE = "Pope et al. 2022, section 2 (decoding is memory-bandwidth bound)"
PREFILL_SOURCE = "Kaplan et al. 2020, Table 1 (forward FLOPs per token 2N + 2 L n_ctx d_attn)"
MAX_GPUS_PER_REPLICA = 1024


@dataclass(frozen=True)
class ServeRequest:
    """An inference sizing question for one replica.

    ``gpus_per_replica`` is chosen when ``None``; ``bandwidth`` (bytes/s per device) overrides the
    GPU's, for what-if comparisons (e.g. a CPU at 64 GB/s); ``prompt`` defaults to ``context``.
    """

    model: ModelShape
    gpu: GpuSpec
    context: int
    batch: int = 1
    precision: Precision = Precision.BF16
    kv_precision: Precision = Precision.BF16
    gpus_per_replica: int | None = None
    prompt: int | None = None
    memory_fraction: float = 0.9
    bandwidth: float | None = None


def weight_bytes(params: float, precision: Precision) -> float:
    """Bytes of weights: parameters x bytes per parameter."""
    return params * precision.bytes


def kv_bytes_per_token(model: ModelShape, precision: Precision) -> tuple[float, str]:
    """KV-cache bytes per token and the formula: 2 x layers x kv_heads x head_dim x bytes (GQA/MQA aware)."""
    layers, _, _ = model.require_shape("the KV cache")
    elements = model.kv_elements_per_token_per_layer()
    if model.kv_cache_dim is not None:
        return layers * elements * precision.bytes, f"layers x {elements} (latent) x {precision.bytes:g} B"
    return layers * elements * precision.bytes, (
        f"2 x {layers} layers x {elements // 2} (kv_heads x head_dim) x {precision.bytes:g} B"
    )


def decode_seconds_lower_bound(active_weight_bytes: float, bandwidth: float) -> float:
    """Seconds per decoded token at batch 1, at least: bytes of active weights / memory bandwidth."""
    if bandwidth <= 0:
        raise PlanInputError("--bandwidth must be positive")
    return active_weight_bytes / bandwidth


def decode_step_seconds(
    active_weight_bytes: float, kv_bytes: float, flops: float, bandwidth: float, peak: float
) -> float:
    """Seconds of one decode step, at least: max(bytes read / bandwidth, FLOPs / peak)."""
    return max((active_weight_bytes + kv_bytes) / bandwidth, flops / peak)


def prefill_flops(model: ModelShape, prompt: int) -> float:
    """Forward FLOPs of a prompt: P x (2 N_active + 2 L P d_attn) (Kaplan et al. 2020, Table 1)."""
    layers, _, _ = model.require_shape("prefill compute")
    return prompt * (2 * model.active + 2 * layers * prompt * model.attention_dim)


def gpus_per_replica(request: ServeRequest, needed_bytes: float) -> int:
    """The fewest GPUs (a power of two dividing the attention heads) whose usable memory holds
    ``needed_bytes``; raises PlanInputError when none up to 1024 does."""
    usable = request.gpu.memory_bytes * request.memory_fraction
    heads = request.model.heads or 1
    count = 1
    while count <= MAX_GPUS_PER_REPLICA:
        if (heads % count == 0 or count > heads) and count * usable >= needed_bytes:
            return count
        count *= 2
    raise PlanInputError(
        f"{request.model.name} with {format_bytes(needed_bytes)} does not fit {MAX_GPUS_PER_REPLICA} "
        f"x {request.gpu.name}; lower --batch or --context, or use a smaller --precision"
    )


def _check(request: ServeRequest) -> None:
    if request.context < 1 or request.batch < 1:
        raise PlanInputError("--context and --batch must be at least 1")
    if request.prompt is not None and not 1 <= request.prompt <= request.context:
        raise PlanInputError(f"--prompt {request.prompt} must be between 1 and --context {request.context}")
    if not 0 < request.memory_fraction <= 1:
        raise PlanInputError(f"--memory-fraction must be in (0, 1], got {request.memory_fraction}")
    if request.gpus_per_replica is not None and request.gpus_per_replica < 1:
        raise PlanInputError("the GPU count in --gpu must be at least 1")
    if request.bandwidth is not None and not 0 < request.bandwidth < math.inf:
        raise PlanInputError(f"--bandwidth must be positive, got {request.bandwidth}")


def _memory_terms(request: ServeRequest) -> tuple[list[Term], float, float, int]:
    model = request.model
    weights = weight_bytes(model.params, request.precision)
    per_token, kv_words = kv_bytes_per_token(model, request.kv_precision)
    per_sequence = per_token * request.context
    needed = weights + per_sequence * request.batch
    gpus = request.gpus_per_replica or gpus_per_replica(request, needed)
    usable = gpus * request.gpu.memory_bytes * request.memory_fraction
    concurrent = max(0, math.floor((usable - weights) / per_sequence))
    how = "given (--gpu NxGPU)" if request.gpus_per_replica else "fewest GPUs (power of 2) that hold it"
    terms = [
        Term("weights", f"Weights ({request.precision})", weights, Unit.BYTES,
             f"{format_count(model.params)} params x {request.precision.bytes:g} B", model.source),
        Term("kv_per_token", f"KV cache per token ({request.kv_precision})", per_token, Unit.BYTES, kv_words,
             KV_SOURCE),
        Term("kv_per_sequence", "KV cache per sequence", per_sequence, Unit.BYTES,
             f"per token x context {request.context}", KV_SOURCE),
        Term("kv_batch", f"KV cache for the batch of {request.batch}", per_sequence * request.batch,
             Unit.BYTES, f"per sequence x batch {request.batch}", KV_SOURCE),
        Term("needed", "Memory needed per replica", needed, Unit.BYTES, "weights + KV cache of the batch"),
        Term("gpus_per_replica", "GPUs per replica", gpus, Unit.COUNT, how),
        Term("usable", "Usable memory per replica", usable, Unit.BYTES,
             f"{gpus} x {request.gpu.memory_gib:g} GiB x {request.memory_fraction:g}", request.gpu.source),
        Term("max_sequences", f"Concurrent sequences at context {request.context}", concurrent, Unit.COUNT,
             "floor((usable - weights) / KV per sequence)"),
    ]
    return terms, needed, usable, gpus


def _speed_terms(request: ServeRequest, gpus: int) -> tuple[list[Term], list[str]]:
    model, gpu = request.model, request.gpu
    bandwidth = (request.bandwidth or gpu.bandwidth_bytes_per_s) * gpus
    peak_one, field = gpu.peak_flops(request.precision)
    peak = peak_one * gpus
    active_bytes = weight_bytes(model.active, request.precision)
    per_token, _ = kv_bytes_per_token(model, request.kv_precision)
    kv_read = per_token * request.context * request.batch
    step = decode_step_seconds(active_bytes, kv_read, 2 * model.active * request.batch, bandwidth, peak)
    prompt = request.prompt or request.context
    bw_words = "--bandwidth" if request.bandwidth else f"{gpu.name} bandwidth"
    terms = [
        Term("bandwidth", "Memory bandwidth per replica", bandwidth, Unit.BYTES_PER_S,
             f"{gpus} x {bw_words}", gpu.source),
        Term("decode_latency", "Decode latency per token, at least",
             decode_seconds_lower_bound(active_bytes, bandwidth), Unit.SECONDS,
             "active weight bytes / bandwidth (batch 1)", DECODE_SOURCE),
        Term("decode_step", f"Decode step at batch {request.batch}, at least", step, Unit.SECONDS,
             "max((active weights + KV of the batch at full context) / bandwidth, 2 N_active B / peak)",
             DECODE_SOURCE),
        Term("tokens_per_s", f"Throughput at batch {request.batch}, at most", request.batch / step,
             Unit.TOKENS_PER_S, "batch / decode step", DECODE_SOURCE),
        Term("prefill", f"Prefill of {prompt} tokens, at least", prefill_flops(model, prompt) / peak,
             Unit.SECONDS, f"P (2 N_active + 2 L P d_attn) / ({gpus} x {field.split('_')[0]} peak)",
             PREFILL_SOURCE),
    ]
    notes = []
    if not field.startswith(request.precision.value):
        notes.append(f"{gpu.name} has no {request.precision} tensor-core peak in the catalog; "
                     f"compute bounds use its {field.split('_')[0]} peak.")
    if model.active_params is not None and request.batch > 1:
        notes.append("Mixture of experts: at batch > 1 different tokens use different experts, so a step "
                     "reads more than the active weights; the decode bounds are optimistic.")
    return terms, notes


def plan_serving(request: ServeRequest) -> Report:
    """Answer an inference question: memory term by term, GPUs per replica, concurrency, speed bounds.

    Raises PlanInputError for missing or inconsistent inputs (e.g. a model without a shape).
    """
    _check(request)
    memory, needed, usable, gpus = _memory_terms(request)
    speed, notes = _speed_terms(request, gpus)
    fits = needed <= usable
    if not fits:
        notes.insert(0, f"Does not fit: {format_bytes(needed)} needed, {format_bytes(usable)} usable on "
                        f"{gpus} x {request.gpu.name}.")
    summary: dict[str, Any] = {"fits": fits, "gpus_per_replica": gpus, "needed_bytes": needed,
                               **{t.key: t.value for t in memory + speed}}
    return Report(
        title=f"Serving {request.model.name} on {request.gpu.name}: {gpus} GPU(s) per replica",
        inputs={
            "model": request.model.name, "gpu": request.gpu.name, "context": request.context,
            "batch": request.batch, "precision": str(request.precision),
            "kv_precision": str(request.kv_precision), "gpus_per_replica": request.gpus_per_replica,
            "prompt": request.prompt, "memory_fraction": request.memory_fraction,
            "bandwidth": request.bandwidth,
        },
        terms=memory + speed, summary=summary,
        notes=[*notes, "Bounds assume perfect overlap and ignore communication between GPUs."],
    )
