"""Training compute and time.

FLOPs (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", section 2.1; Hoffmann et al.
2022, "Training Compute-Optimal Large Language Models"): about 6 N D for N parameters (active
parameters for a mixture of experts) and D tokens: 2 N D forward, 4 N D backward. Full activation
recomputation repeats the forward pass: 8 N D (Narayanan et al. 2021, section 5.1).

Time = FLOPs / (GPUs x peak x utilisation). The FLOPs counted include recomputation, so with full
recomputation the utilisation is the hardware FLOPs utilisation in the sense of Chowdhery et al. 2022
(PaLM, appendix B).
"""

from __future__ import annotations

import math

from gpupool.plan.errors import PlanInputError
from gpupool.plan.memory import Recompute
from gpupool.plan.report import Term, Unit

FLOPS_SOURCE = "Kaplan et al. 2020, section 2.1; Hoffmann et al. 2022"
RECOMPUTE_SOURCE = "Narayanan et al. 2021, section 5.1 (an extra forward pass)"
PF_DAY = 1e15 * 86400.0


def training_flops(active_params: float, tokens: float, recompute: Recompute) -> Term:
    """Training FLOPs: ``6 N D``, or ``8 N D`` with full activation recomputation."""
    if recompute is Recompute.FULL:
        return Term("flops", "Training compute", 8 * active_params * tokens, Unit.FLOP,
                    "8 x N x D (full recompute adds a forward pass)", RECOMPUTE_SOURCE)
    return Term("flops", "Training compute", 6 * active_params * tokens, Unit.FLOP,
                "6 x N x D (2 N D forward + 4 N D backward)", FLOPS_SOURCE)


def pf_days(flops: float) -> Term:
    """The same compute in petaFLOP/s-days (1e15 FLOP/s for a day), the unit of the GPT-3 paper."""
    return Term("pf_days", "Training compute in PF-days", flops / PF_DAY, Unit.PF_DAYS,
                "FLOPs / (1e15 x 86,400 s)", "Brown et al. 2020, Table D.1 (unit)")


def check_utilisation(mfu: float) -> float:
    """Return ``mfu`` when it lies in (0, 1]; raise PlanInputError otherwise."""
    if not 0 < mfu <= 1:
        raise PlanInputError(f"--mfu must be a fraction in (0, 1], got {mfu}")
    return mfu


def training_seconds(flops: float, gpus: int, peak_flops: float, mfu: float) -> float:
    """Wall-clock seconds to do ``flops`` on ``gpus`` GPUs at ``mfu`` of ``peak_flops`` each."""
    return flops / (gpus * peak_flops * check_utilisation(mfu))


def gpus_for_deadline(flops: float, deadline_seconds: float, peak_flops: float, mfu: float) -> int:
    """The fewest GPUs that finish ``flops`` within ``deadline_seconds``: ceil(FLOPs / (T x peak x MFU))."""
    if deadline_seconds <= 0:
        raise PlanInputError("--deadline must be positive")
    return math.ceil(flops / (deadline_seconds * peak_flops * check_utilisation(mfu)) - 1e-9)
