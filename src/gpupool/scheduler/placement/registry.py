"""Placement policies by name: an explicit registry, so a profile can select one with a string."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from gpupool.domain.errors import ValidationError, did_you_mean
from gpupool.scheduler.placement.base import PlacementPolicy
from gpupool.scheduler.placement.fgd import FgdPolicy
from gpupool.scheduler.placement.fragmentation import TargetShape
from gpupool.scheduler.placement.names import POLICY_NAMES
from gpupool.scheduler.placement.resource_fit import BestFitPolicy, BinpackPolicy, RandomPolicy, SpreadPolicy

PolicyFactory = Callable[[random.Random, Sequence[TargetShape] | None], PlacementPolicy]

POLICIES: dict[str, PolicyFactory] = {
    "binpack": lambda rng, _target: BinpackPolicy(rng=rng),
    "spread": lambda rng, _target: SpreadPolicy(rng=rng),
    "bestfit": lambda rng, _target: BestFitPolicy(rng=rng),
    "random": lambda rng, _target: RandomPolicy(rng=rng),
    "fgd": lambda rng, target: FgdPolicy(target=target, rng=rng),
    "fgd-plain": lambda rng, target: FgdPolicy(target=target, resolution=1e-6, tie_break=False, rng=rng),
}


if set(POLICIES) != set(POLICY_NAMES):  # pragma: no cover  (a new policy must be named in names.py too)
    raise RuntimeError("placement/names.py and the registry list different policies")


def policy_names() -> list[str]:
    """Names accepted by `make_policy`, sorted."""
    return sorted(POLICIES)


def make_policy(name: str, rng: random.Random | None = None,
                target: Sequence[TargetShape] | None = None) -> PlacementPolicy:
    """A new policy instance. `target` is the FGD target workload (None: learned); `rng` seeds `random`."""
    factory = POLICIES.get(name)
    if factory is None:
        raise ValidationError(f"unknown placement policy {name!r}{did_you_mean(name, POLICIES)}; "
                              f"choose one of {', '.join(policy_names())}", "policy")
    return factory(rng or random.Random(0), target)
