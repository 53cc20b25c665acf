"""Numeric formats: bytes per element and which tensor-core peak a format runs at."""

from __future__ import annotations

from enum import StrEnum

from gpupool.plan.errors import PlanInputError


class Precision(StrEnum):
    """A number format for weights, activations or the KV cache."""

    FP32 = "fp32"
    TF32 = "tf32"
    BF16 = "bf16"
    FP16 = "fp16"
    FP8 = "fp8"
    INT8 = "int8"
    INT4 = "int4"

    @property
    def bytes(self) -> float:
        """Bytes per element: 4 (fp32, tf32 stored as fp32), 2 (bf16, fp16), 1 (fp8, int8), 0.5 (int4)."""
        return _BYTES[self]


_BYTES = {
    Precision.FP32: 4.0, Precision.TF32: 4.0, Precision.BF16: 2.0, Precision.FP16: 2.0,
    Precision.FP8: 1.0, Precision.INT8: 1.0, Precision.INT4: 0.5,
}

# Which catalog peak a format's matrix multiplies run at, best first. Weight-only formats fall back to
# 16-bit math (weights are widened before the multiply), as do GPUs without tensor cores for a format.
PEAK_FIELDS: dict[Precision, tuple[str, ...]] = {
    Precision.FP32: ("fp32_tflops",),
    Precision.TF32: ("tf32_tflops", "fp32_tflops"),
    Precision.BF16: ("bf16_tflops", "fp16_tflops"),
    Precision.FP16: ("fp16_tflops",),
    Precision.FP8: ("fp8_tflops", "bf16_tflops", "fp16_tflops"),
    Precision.INT8: ("int8_tops", "bf16_tflops", "fp16_tflops"),
    Precision.INT4: ("bf16_tflops", "fp16_tflops"),
}


def parse_precision(text: str, what: str = "--precision") -> Precision:
    """Read a precision name (case-insensitive); raises PlanInputError listing the known ones."""
    try:
        return Precision(text.strip().lower())
    except ValueError:
        known = ", ".join(p.value for p in Precision)
        raise PlanInputError(f"{what}: unknown precision {text!r} (known: {known})") from None
