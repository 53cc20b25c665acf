"""Resource-fit policies: binpack (most allocated), spread (least allocated), bestfit (least leftover), random.

Scores for a candidate node after the replica would be placed there; `cap`/`free` are node totals.

- binpack: mean over CPU, memory and (on GPU nodes) GPU of (cap - free + request) / cap, highest first.
- spread:  the negative of binpack's score, so the least allocated node wins.
- bestfit: least leftover, 0.5 (free_cpu - cpu) / max_cpu + 0.5 (free_gpu - gpu) / max_gpu, the weighted
  leftover of the FGD paper's BestFit baseline (max_* = the largest node's capacity); lowest leftover first.
- random: a uniformly random fitting node and card (seeded).
"""

from __future__ import annotations

import numpy as np

from gpupool.domain.resources import ReplicaRequest
from gpupool.scheduler.placement.base import PlacementPolicy, Scored
from gpupool.scheduler.placement.filters import FloatArray, ShareTerms
from gpupool.scheduler.snapshot import ClusterSnapshot, IntArray


def allocated_fraction(snap: ClusterSnapshot, request: ReplicaRequest, rows: IntArray) -> FloatArray:
    """Mean allocated fraction of CPU, memory and GPU (GPU only on GPU nodes) after placing `request`."""
    cpu = (snap.cap_cpu[rows] - snap.free_cpu[rows] + request.cpu_milli) / np.maximum(snap.cap_cpu[rows], 1)
    mem = (snap.cap_mem[rows] - snap.free_mem[rows] + request.memory_mib) / np.maximum(snap.cap_mem[rows], 1)
    cap_gpu = snap.cap_gpu[rows]
    has_gpu = cap_gpu > 0
    gpu = np.where(has_gpu, (cap_gpu - snap.free_gpu_total[rows] + request.gpu.nominal_milli())
                   / np.maximum(cap_gpu, 1), 0.0)
    result: FloatArray = (cpu + mem + gpu) / (2.0 + has_gpu)
    return result


class BinpackPolicy(PlacementPolicy):
    """Most allocated node first; shares go to the fullest card that fits."""

    name = "binpack"

    def score(self, snap: ClusterSnapshot, request: ReplicaRequest, rows: IntArray) -> Scored:
        return Scored(allocated_fraction(snap, request, rows))


class SpreadPolicy(PlacementPolicy):
    """Least allocated node first; shares go to the emptiest card that fits."""

    name = "spread"

    def score(self, snap: ClusterSnapshot, request: ReplicaRequest, rows: IntArray) -> Scored:
        return Scored(-allocated_fraction(snap, request, rows))

    def choose_share_card(self, snap: ClusterSnapshot, row: int, request: ReplicaRequest, terms: ShareTerms) -> int:
        free = np.where(terms.fits[0], snap.free_milli[row], -1)
        return int(np.argmax(free))


def negative_leftover(snap: ClusterSnapshot, request: ReplicaRequest, rows: IntArray) -> FloatArray:
    """-(0.5 (free_cpu - cpu) / max_cpu + 0.5 (free_gpu - gpu) / max_gpu) per row: higher is a tighter fit."""
    scale: tuple[int, int] | None = snap.__dict__.get("_leftover_scale")
    if scale is None:  # the largest node's CPU and GPU: fixed while the snapshot lives, so found once
        scale = snap.__dict__["_leftover_scale"] = (max(int(snap.cap_cpu.max(initial=1)), 1),
                                                    max(int(snap.cap_gpu.max(initial=1)), 1))
    max_cpu, max_gpu = scale
    leftover: FloatArray = (0.5 * (snap.free_cpu[rows] - request.cpu_milli) / max_cpu
                            + 0.5 * (snap.free_gpu_total[rows] - request.gpu.nominal_milli()) / max_gpu)
    return -leftover


class BestFitPolicy(PlacementPolicy):
    """Node with the least weighted CPU+GPU leftover; shares go to the tightest card."""

    name = "bestfit"

    def score(self, snap: ClusterSnapshot, request: ReplicaRequest, rows: IntArray) -> Scored:
        return Scored(negative_leftover(snap, request, rows))


class RandomPolicy(PlacementPolicy):
    """A uniformly random fitting node and card, from the policy's seeded generator."""

    name = "random"
    draws_randomly = True

    def score(self, snap: ClusterSnapshot, request: ReplicaRequest, rows: IntArray) -> Scored:
        scores = np.zeros(len(rows))
        scores[self.rng.randrange(len(rows))] = 1.0
        return Scored(scores)

    def choose_share_card(self, snap: ClusterSnapshot, row: int, request: ReplicaRequest, terms: ShareTerms) -> int:
        columns = np.flatnonzero(terms.fits[0])
        return int(columns[self.rng.randrange(len(columns))])
