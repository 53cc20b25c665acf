"""`gpupool sweep show --plot out.png`: Optuna's matplotlib visualisations of a sweep, drawn on this machine.

The server sends the trials (`SweepDetail`); they are loaded into an in-memory Optuna study with the sweep's
distributions, and three of Optuna's plots (optimisation history, parameter importances, parallel coordinates)
are stacked into one PNG. Importances use PED-ANOVA, which needs no scikit-learn.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpupool.domain.errors import ConflictError
from gpupool.domain.sweeps import parse_sweep

if TYPE_CHECKING:
    from gpupool.api.sweep_schemas import SweepDetail

DPI = 100  # each panel is Optuna's default 6.4 x 4.8 in figure: 640 x 480 pixels


def study_of(detail: SweepDetail) -> Any:
    """An in-memory Optuna study holding the sweep's ended trials (running ones have no value yet)."""
    import optuna  # noqa: PLC0415  (plots are optional; Optuna loads only for them)

    from gpupool.optuna_space import distributions  # noqa: PLC0415

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    spec = parse_sweep({"objective": {"metric": detail.metric, "direction": detail.direction},
                        "search": detail.search, "trials": detail.planned, "trial": {"command": "true"}})
    dists = distributions(spec)
    study = optuna.create_study(direction=detail.direction)
    states = {"complete": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED,
              "fail": optuna.trial.TrialState.FAIL}
    for t in detail.trials:
        if t.state not in states or set(t.params) != set(dists):
            continue
        study.add_trial(optuna.trial.create_trial(
            params=t.params, distributions=dists, state=states[t.state],
            value=t.value if t.state == "complete" else None, intermediate_values=dict(t.intermediate)))
    return study


def plot(detail: SweepDetail, out: Path) -> list[str]:
    """Write the three plots of the sweep into `out` (PNG); returns the names of the panels drawn.
    ConflictError when no trial has completed yet (there is nothing to draw)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import optuna.visualization.matplotlib as vis  # noqa: PLC0415
    from optuna.importance import PedAnovaImportanceEvaluator  # noqa: PLC0415

    study = study_of(detail)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not done:
        raise ConflictError(f"sweep {detail.name} has no completed trial yet; nothing to plot")
    panels: list[tuple[str, Any]] = [("optimisation history", lambda: vis.plot_optimization_history(study))]
    if len(done) >= 2:  # importances compare trials: two at least
        panels.append(("parameter importances", lambda: vis.plot_param_importances(
            study, evaluator=PedAnovaImportanceEvaluator())))
    panels.append(("parallel coordinates", lambda: vis.plot_parallel_coordinate(study)))
    images, drawn = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        for name, draw in panels:
            axes = draw()
            buffer = io.BytesIO()
            axes.figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
            plt.close(axes.figure)
            buffer.seek(0)
            images.append(plt.imread(buffer))
            drawn.append(name)
    figure, grid = plt.subplots(len(images), 1, figsize=(8, 5 * len(images)), dpi=DPI, squeeze=False)
    for ax, image in zip(grid[:, 0], images, strict=True):
        ax.imshow(image)
        ax.axis("off")
    figure.suptitle(f"sweep {detail.name} ({detail.metric}, {detail.direction})")
    figure.tight_layout()
    figure.savefig(out, format="png")
    plt.close(figure)
    return drawn
