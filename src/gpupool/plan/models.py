"""Transformer model shapes: the built-in table, shapes given by numbers, and shapes estimated.

Parameter count from a shape (Narayanan et al. 2021, "Efficient Large-Scale Language Model Training
on GPU Clusters Using Megatron-LM", section 5.1): ``P = 12 l h^2 (1 + 13/(12 h) + (V + s)/(12 l h))``
for ``l`` layers of width ``h``, a vocabulary of ``V`` and ``s`` positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from gpupool.plan.errors import PlanInputError
from gpupool.plan.units import format_count

ESTIMATED_ASPECT_RATIO = 128  # hidden / layers of GPT-3 175B (12288 / 96) and Llama-2-7B (4096 / 32)
ESTIMATED_HEAD_DIM = 128
PARAMS_TOLERANCE = 0.20  # how far --params may be from the count the shape implies


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer as the planner needs it.

    ``params`` counts every weight (what memory holds); ``active_params`` the weights used per token
    (smaller for a mixture of experts; ``None`` means all). Shape fields are ``None`` when unknown.
    """

    name: str
    params: float
    layers: int | None = None
    hidden: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    vocab: int | None = None
    active_params: float | None = None
    kv_cache_dim: int | None = None
    source: str = ""
    estimated: bool = False
    params_origin: str = "from the model catalog"

    @property
    def active(self) -> float:
        """Parameters used per token: ``active_params`` for a mixture of experts, else ``params``."""
        return self.active_params if self.active_params is not None else self.params

    @property
    def has_shape(self) -> bool:
        """Whether layers, hidden size and heads are known (activations and KV cache need them)."""
        return self.layers is not None and self.hidden is not None and self.heads is not None

    def require_shape(self, what: str) -> tuple[int, int, int]:
        """Layers, hidden size and heads, or a :class:`PlanInputError` saying ``what`` needs them."""
        if self.layers is None or self.hidden is None or self.heads is None:
            raise PlanInputError(
                f"{what} needs the model shape: give --model, or --layers, --hidden and --heads"
            )
        return self.layers, self.hidden, self.heads

    @property
    def attention_dim(self) -> int:
        """Width of the attention projections: heads x head_dim (usually the hidden size)."""
        _, hidden, heads = self.require_shape("the attention width")
        return heads * (self.head_dim or hidden // heads)

    def kv_elements_per_token_per_layer(self) -> int:
        """Elements cached per token and layer: ``2 * kv_heads * head_dim``, or ``kv_cache_dim``."""
        if self.kv_cache_dim is not None:
            return self.kv_cache_dim
        _, hidden, heads = self.require_shape("the KV cache")
        return 2 * (self.kv_heads or heads) * (self.head_dim or hidden // heads)


def params_from_shape(layers: int, hidden: int, vocab: int = 0, positions: int = 0) -> float:
    """Parameters of a GPT-style transformer: ``12 l h^2 (1 + 13/(12h) + (V + s)/(12 l h))``.

    Narayanan et al. 2021, section 5.1. ``vocab`` and ``positions`` may be 0 when unknown, which
    leaves the embeddings out.
    """
    return 12 * layers * hidden**2 * (1 + 13 / (12 * hidden) + (vocab + positions) / (12 * layers * hidden))


def estimate_shape(name: str, params: float) -> ModelShape:
    """A plausible shape for ``params`` parameters when only the count is known.

    Solves ``12 l h^2 = params`` with ``h = 128 l`` (the aspect ratio of GPT-3 175B and Llama-2-7B),
    rounds the layers, then the width ``sqrt(params / (12 l))`` to a multiple of 1024 (of 128 below
    1024), with one head per 128 dimensions.
    """
    layers = max(1, round((params / (12 * ESTIMATED_ASPECT_RATIO**2)) ** (1 / 3)))
    raw_hidden = math.sqrt(params / (12 * layers))
    step = 1024 if raw_hidden >= 1024 else ESTIMATED_HEAD_DIM  # 1024: heads a multiple of 8 (TP up to 8)
    hidden = max(1, round(raw_hidden / step)) * step
    heads = hidden // ESTIMATED_HEAD_DIM
    return ModelShape(
        name=name, params=params, layers=layers, hidden=hidden, heads=heads, kv_heads=heads,
        source="shape estimated from the parameter count (hidden about 128 x layers, head_dim 128)",
        estimated=True, params_origin="given (--params)",
    )


def validate_shape(model: ModelShape) -> ModelShape:
    """Check the shape's fields agree with each other; returns the model or raises PlanInputError."""
    for field_name in ("layers", "hidden", "heads", "kv_heads", "head_dim", "vocab", "kv_cache_dim"):
        value = getattr(model, field_name)
        if value is not None and value <= 0:
            raise PlanInputError(f"{model.name}: {field_name} must be positive, got {value}")
    hidden, heads = model.hidden, model.heads
    if hidden is not None and heads is not None and model.head_dim is None and hidden % heads:
        raise PlanInputError(
                f"{model.name}: --hidden {model.hidden} is not a multiple of --heads {model.heads}"
            )
    if model.kv_heads is not None and model.heads is not None and model.heads % model.kv_heads:
        raise PlanInputError(
            f"{model.name}: --heads {model.heads} is not a multiple of --kv-heads {model.kv_heads}"
        )
    if model.active_params is not None and model.active_params > model.params:
        raise PlanInputError(
            f"{model.name}: --active-params {format_count(model.active_params)} exceeds "
            f"--params {format_count(model.params)}"
        )
    return model


@dataclass(frozen=True)
class ShapeArgs:
    """A model as given by numbers on the command line (every field optional)."""

    params: float | None = None
    layers: int | None = None
    hidden: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    vocab: int | None = None
    active_params: float | None = None

    def any_shape(self) -> bool:
        """Whether any field was given."""
        return any(v is not None for v in vars(self).values())


def model_from_args(args: ShapeArgs) -> ModelShape:
    """Build a model from numbers: a full shape, a parameter count alone (shape estimated), or both.

    Raises PlanInputError when nothing is given, when a shape is incomplete, or when ``--params`` is
    more than 20% away from the count the shape implies.
    """
    for name in ("params", "active_params"):
        value = getattr(args, name)
        if value is not None and not 0 < value < math.inf:
            raise PlanInputError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
    has_dims = args.layers is not None or args.hidden is not None or args.heads is not None
    if not has_dims:
        if args.params is None:
            raise PlanInputError("no model given: pass --model NAME, or --params (e.g. 7B), or the shape")
        model = estimate_shape(f"{format_count(args.params)} params", args.params)
        return validate_shape(replace(model, active_params=args.active_params))
    for name in ("layers", "hidden", "heads", "kv_heads", "vocab"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise PlanInputError(f"--{name.replace('_', '-')} must be positive, got {value}")
    layers, hidden, heads = args.layers, args.hidden, args.heads
    if layers is None or hidden is None or heads is None:
        missing = [f"--{n}" for n in ("layers", "hidden", "heads") if getattr(args, n) is None]
        raise PlanInputError(f"incomplete model shape: also give {', '.join(missing)}")
    implied = params_from_shape(layers, hidden, args.vocab or 0)
    if args.params is not None and abs(args.params - implied) > PARAMS_TOLERANCE * implied:
        raise PlanInputError(
            f"inconsistent model: --params {format_count(args.params)} but --layers {layers} "
            f"--hidden {hidden} imply about {format_count(implied)} parameters"
        )
    params = args.params if args.params is not None else implied
    model = ModelShape(
        name=f"custom {format_count(params)}", params=params, layers=layers, hidden=hidden,
        heads=heads, kv_heads=args.kv_heads, vocab=args.vocab, active_params=args.active_params,
        source="given on the command line",
        params_origin="given (--params)" if args.params is not None else
        "12 l h^2 (1 + 13/(12h) + V/(12 l h)) (Narayanan et al. 2021)",
    )
    return validate_shape(model)
