"""Training memory per GPU: model states under ZeRO, and activations.

Model states (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter
Models", section 3.1 and Figure 1): mixed-precision Adam keeps 2 bytes of 16-bit weights, 2 bytes of
16-bit gradients and K = 12 bytes of optimizer state (fp32 master weights, momentum, variance) per
parameter, 16 in all. Over N_d data-parallel ranks, stage 1 divides the optimizer states by N_d,
stage 2 also the gradients, stage 3 also the weights.

Activations (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models",
Table 2), bytes per transformer layer with sequence length s, micro-batch b, hidden size h, a heads,
tensor-parallel size t and 16-bit activations:

- no parallelism, no recomputation: s b h (34 + 5 a s / h)
- tensor parallel: s b h (10 + 24/t + 5 a s / (h t)); with sequence parallel: s b h (34/t + 5 a s / (h t))
- selective recomputation drops the attention term 5 a s / h: s b h (10 + 24/t), or s b h 34/t with
  sequence parallel
- full recomputation keeps only each layer's input: 2 s b h (divided by t with sequence parallel)

With pipeline parallelism and the 1F1B schedule the first stage holds p micro-batches of L/p layers,
that is L layers' worth (Korthikanti et al. 2022, section 4.2.3), so the busiest GPU holds
``layers x per-layer`` whatever p is.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from gpupool.plan.errors import PlanInputError
from gpupool.plan.models import ModelShape
from gpupool.plan.precision import Precision
from gpupool.plan.report import Term, Unit

ZERO_SOURCE = "Rajbhandari et al. 2020 (ZeRO), section 3.1 and Figure 1"
ACTIVATION_SOURCE = "Korthikanti et al. 2022, Table 2 and section 4.2.3"
MIXED_PRECISIONS = (Precision.BF16, Precision.FP16)
TRAINING_PRECISIONS = (Precision.BF16, Precision.FP16, Precision.FP32, Precision.TF32)


class Optimizer(StrEnum):
    """Optimizer, which decides the bytes of state per parameter."""

    ADAM = "adam"
    SGD = "sgd"
    ADAM_8BIT = "adam-8bit"

    @property
    def state_bytes(self) -> float:
        """Bytes of optimizer state per parameter besides a master copy: Adam 8 (momentum and
        variance in fp32), SGD with momentum 4, 8-bit Adam 2 (Dettmers et al. 2022)."""
        return {Optimizer.ADAM: 8.0, Optimizer.SGD: 4.0, Optimizer.ADAM_8BIT: 2.0}[self]


class Recompute(StrEnum):
    """Activation recomputation (Korthikanti et al. 2022): none, selective (attention core), full."""

    NONE = "none"
    SELECTIVE = "selective"
    FULL = "full"


@dataclass(frozen=True)
class Layout:
    """A parallel layout: tensor (tp), pipeline (pp) and data (dp) parallel sizes and the ZeRO stage.

    ``sequence_parallel`` applies only when tp > 1 (it splits the sequence along the tensor group).
    """

    tp: int = 1
    pp: int = 1
    dp: int = 1
    zero: int = 0
    sequence_parallel: bool = True

    @property
    def gpus(self) -> int:
        """GPUs the layout takes: tp x pp x dp."""
        return self.tp * self.pp * self.dp

    @property
    def label(self) -> str:
        """``TP 2 x PP 1 x DP 4, ZeRO-1``."""
        sp = " + SP" if self.sequence_parallel and self.tp > 1 else ""
        return f"TP {self.tp}{sp} x PP {self.pp} x DP {self.dp}, ZeRO-{self.zero}"


@dataclass(frozen=True)
class TrainingSetup:
    """What one training step holds in memory: the model, the micro-batch, the formats, the layout."""

    model: ModelShape
    seq: int
    micro_batch: int
    precision: Precision = Precision.BF16
    optimizer: Optimizer = Optimizer.ADAM
    recompute: Recompute = Recompute.SELECTIVE
    layout: Layout = Layout()


def bytes_per_param(precision: Precision, optimizer: Optimizer) -> tuple[float, float, float]:
    """Bytes per parameter of weights, gradients and optimizer state (K).

    Mixed precision (bf16/fp16): 2, 2 and 4 (fp32 master copy) + the optimizer's state; mixed Adam is
    2 + 2 + 12 = 16 (ZeRO paper). fp32/tf32: 4, 4 and the optimizer's state alone.
    """
    if precision in MIXED_PRECISIONS:
        return 2.0, 2.0, 4.0 + optimizer.state_bytes
    if precision in (Precision.FP32, Precision.TF32):
        return 4.0, 4.0, optimizer.state_bytes
    known = ", ".join(p.value for p in TRAINING_PRECISIONS)
    raise PlanInputError(f"--precision {precision} is not a training precision here (use {known})")


def check_layout(layout: Layout) -> None:
    """Raise PlanInputError when a layout's sizes are not positive or the ZeRO stage is not 0-3."""
    for name in ("tp", "pp", "dp"):
        if getattr(layout, name) < 1:
            raise PlanInputError(f"--{name} must be at least 1, got {getattr(layout, name)}")
    if layout.zero not in (0, 1, 2, 3):
        raise PlanInputError(f"--zero must be 0, 1, 2 or 3, got {layout.zero}")


def model_state_terms(params: float, setup: TrainingSetup) -> list[Term]:
    """Weights, gradients and optimizer states per GPU, each a Term (bytes) with its formula."""
    layout = setup.layout
    check_layout(layout)
    w, g, k = bytes_per_param(setup.precision, setup.optimizer)
    shard = params / (layout.tp * layout.pp)
    d = layout.dp
    split = "P / (tp x pp)" if layout.tp * layout.pp > 1 else "P"

    def part(stage: int, per_param: float) -> tuple[float, str]:
        if layout.zero >= stage:
            return per_param * shard / d, f"{per_param:g} B x {split} / dp (ZeRO-{layout.zero} partitions it)"
        return per_param * shard, f"{per_param:g} B x {split}"

    (wv, wf), (gv, gf), (kv, kf) = part(3, w), part(2, g), part(1, k)
    return [
        Term("weights", "Weights", wv, Unit.BYTES, wf, ZERO_SOURCE),
        Term("gradients", "Gradients", gv, Unit.BYTES, gf, ZERO_SOURCE),
        Term("optimizer", f"Optimizer states ({setup.optimizer}, K={k:g})", kv, Unit.BYTES, kf, ZERO_SOURCE),
    ]


def activation_bytes_per_layer(
    *,
    seq: int, micro_batch: int, hidden: int, heads: int, tp: int, sequence_parallel: bool,
    recompute: Recompute,
) -> tuple[float, str]:
    """Activation bytes of one transformer layer on one GPU, and the formula used (Korthikanti Table 2)."""
    sbh = float(seq) * micro_batch * hidden
    sp = sequence_parallel and tp > 1
    if recompute is Recompute.FULL:
        if sp:
            return 2 * sbh / tp, "2 s b h / t (layer input only)"
        return 2 * sbh, "2 s b h (layer input only)"
    keep_attention = recompute is Recompute.NONE
    attention = 5 * heads * seq / hidden if keep_attention else 0.0
    attention_words = ("" if not keep_attention else " + 5 a s / h" if tp == 1 else " + 5 a s / (h t)")
    if tp == 1:
        return sbh * (34 + attention), f"s b h (34{attention_words})"
    if sp:
        return sbh * (34 + attention) / tp, f"s b h (34/t{attention_words})"
    return sbh * (10 + 24 / tp + attention / tp), f"s b h (10 + 24/t{attention_words})"


def activation_terms(setup: TrainingSetup) -> list[Term]:
    """Activation bytes per layer and for the busiest GPU (all layers, 1F1B), as Terms."""
    layers, hidden, heads = setup.model.require_shape("activation memory")
    layout = setup.layout
    per_layer, words = activation_bytes_per_layer(
        seq=setup.seq, micro_batch=setup.micro_batch, hidden=hidden, heads=heads, tp=layout.tp,
        sequence_parallel=layout.sequence_parallel, recompute=setup.recompute,
    )
    pipeline = " (1F1B: first stage holds pp micro-batches of L/pp layers)" if layout.pp > 1 else ""
    return [
        Term("activations_per_layer", f"Activations per layer ({setup.recompute} recompute)", per_layer,
             Unit.BYTES, f"{words}, s={setup.seq} b={setup.micro_batch} h={hidden} a={heads} t={layout.tp}",
             ACTIVATION_SOURCE),
        Term("activations", "Activations", per_layer * layers, Unit.BYTES,
             f"per layer x L (L={layers}){pipeline}", ACTIVATION_SOURCE),
    ]


def training_memory_bytes(setup: TrainingSetup) -> float:
    """Total bytes on the busiest GPU: weights + gradients + optimizer states + activations."""
    terms = model_state_terms(setup.model.params, setup) + activation_terms(setup)
    return sum(t.value for t in terms if t.key != "activations_per_layer")
