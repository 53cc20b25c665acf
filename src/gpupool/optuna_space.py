"""Optuna objects of a sweep spec (distributions, sampler, pruner), shared by the server and the CLI's plots."""

from __future__ import annotations

from typing import Any

from gpupool.domain.errors import ValidationError
from gpupool.domain.sweeps import Param, SweepSpec


def load_optuna() -> Any:
    """The optuna module (quiet), or ValidationError saying how to install it."""
    try:
        import optuna  # noqa: PLC0415  (sweeps are optional: Optuna loads on first use)
    except ImportError:
        raise ValidationError("sweeps need Optuna: pip install 'gpupool[sweeps]'", "kind") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def distributions(spec: SweepSpec) -> dict[str, Any]:
    """Optuna distributions of the sweep's search space, by parameter name."""
    return {p.name: distribution(p) for p in spec.search}


def distribution(param: Param) -> Any:
    """The Optuna distribution of one parameter."""
    dist = load_optuna().distributions
    if param.kind == "choice":
        return dist.CategoricalDistribution(list(param.choices))
    if param.kind in ("int", "log_int"):
        return dist.IntDistribution(int(param.low), int(param.high), log=param.kind == "log_int")
    return dist.FloatDistribution(param.low, param.high, log=param.kind == "log_uniform")


def sampler(spec: SweepSpec, asked: int) -> Any:
    """A fresh sampler for the next ask. Seeded sweeps reseed with (seed, trials asked so far), so a restarted
    server does not draw the same random points again and the same history gives the same next point."""
    samplers = load_optuna().samplers
    a = spec.algorithm
    seed = None if a.seed is None else (a.seed * 1_000_003 + asked) % 2**32
    if a.sampler == "random":
        return samplers.RandomSampler(seed=seed)
    if a.sampler == "grid":
        # The grid sampler shuffles its grid with its seed and names points by their index in that order, so
        # every instance (one per ask, and after a restart) must shuffle alike: always the spec's seed, else 0.
        return _grid_sampler_class()({p.name: p.grid_values() for p in spec.search}, seed=a.seed or 0)
    if a.sampler == "cmaes":
        return samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return samplers.TPESampler(seed=seed)


def pruner(spec: SweepSpec) -> Any:
    """The spec's pruner: median (after `startup_trials` finished, past `warmup_steps`), hyperband or none."""
    pruners = load_optuna().pruners
    a = spec.algorithm
    if a.pruner == "median":
        return pruners.MedianPruner(n_startup_trials=a.startup_trials, n_warmup_steps=a.warmup_steps)
    if a.pruner == "hyperband":
        return pruners.HyperbandPruner()
    return pruners.NopPruner()


_GRID: list[Any] = []


def _grid_sampler_class() -> Any:
    """Optuna's GridSampler without its `study.stop()` once the grid is walked: that call is only allowed
    inside `study.optimize`, and a sweep asks and tells instead (the spec's `trials` is at most the grid's size,
    so the controller stops asking by itself)."""
    if not _GRID:
        base = load_optuna().samplers.GridSampler

        class AskTellGridSampler(base):  # type: ignore[misc,valid-type]
            def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
                return None

        _GRID.append(AskTellGridSampler)
    return _GRID[0]
