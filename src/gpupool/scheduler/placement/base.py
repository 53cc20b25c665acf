"""The placement policy interface: score candidate nodes, pick the card for a GPU share."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from gpupool.domain.resources import ReplicaRequest
from gpupool.scheduler.placement.filters import FloatArray, ShareTerms
from gpupool.scheduler.snapshot import ClusterSnapshot, IntArray


@dataclass(frozen=True, slots=True)
class Scored:
    """Scores of candidate rows (higher is better) and, when the policy chose them while scoring, the
    card column each row would give a GPU share (None: let `choose_share_card` decide).

    A policy whose full ranking is costly may give `best` (the index of the top row) and `ranking`
    (computes the scores on demand) instead of `scores`.
    """

    scores: FloatArray | None = None
    share_columns: IntArray | None = None
    best: int | None = None
    ranking: Callable[[], FloatArray] | None = None

    def all_scores(self) -> FloatArray:
        """The score of every row (computed now when the policy deferred it)."""
        if self.scores is not None:
            return self.scores
        if self.ranking is None:
            raise ValueError("a Scored needs scores or a ranking")
        return self.ranking()

    def top(self) -> int:
        """Index of the best row (ties: the first)."""
        return self.best if self.best is not None else int(np.argmax(self.all_scores()))


class PlacementPolicy(ABC):
    """Scores nodes for one replica. Subclasses set `name` and implement `score`.

    `learns_target` declares that the policy wants `observe` called with every submitted request
    (fragmentation-aware policies learn the workload mix that way). `draws_randomly` declares that scoring
    draws from `rng`, so that a cycle run or not run changes later decisions (a caller that skips cycles whose
    outcome it knows must not skip them for such a policy).
    """

    name: ClassVar[str]
    learns_target: ClassVar[bool] = False
    draws_randomly: ClassVar[bool] = False

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random(0)

    @abstractmethod
    def score(self, snap: ClusterSnapshot, request: ReplicaRequest, rows: IntArray) -> Scored:
        """Score the candidate node `rows` (all already known to fit `request`); higher is better."""

    def choose_share_card(self, snap: ClusterSnapshot, row: int, request: ReplicaRequest, terms: ShareTerms) -> int:
        """Column of the card on node `row` that gets a share; `terms` covers that row only.
        Default: best fit, the fitting card with the least free compute (lowest column on ties)."""
        free = np.where(terms.fits[0], snap.free_milli[row], np.iinfo(np.int64).max)
        return int(np.argmin(free))

    def observe(self, request: ReplicaRequest) -> None:  # noqa: B027  (optional hook, no-op by default)
        """Learn from a submitted request (only called when `learns_target`)."""
