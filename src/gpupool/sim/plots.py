"""PNG plots of simulator results (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_inflation(grid: Sequence[float], curves: Mapping[str, Sequence[float | None]], path: Path | str,
                   title: str) -> None:
    """Unallocated GPU % against arrived GPU % (one line per policy: the median over seeds), over the whole
    run and zoomed in from 85% arrived, where the policies part."""
    fig, (whole, zoom) = plt.subplots(1, 2, figsize=(12, 5))
    for ax, low in ((whole, min(grid)), (zoom, 85.0)):
        top = 0.0
        for policy, values in curves.items():
            points = [(x, v) for x, v in zip(grid, values, strict=True) if v is not None and x >= low]
            ax.plot([x for x, _ in points], [v for _, v in points], label=policy, linewidth=1.6)
            top = max([top, *(v for _, v in points)])
        ax.axvline(100, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("arrived GPU requests (% of cluster GPU capacity)")
        ax.set_ylabel("unallocated GPU (% of capacity)")
        ax.set_xlim(low, max(grid))
        ax.set_ylim(0, top * 1.05 if top else 1)
        ax.grid(alpha=0.3)
    zoom.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_replay(allocation_pct: Sequence[tuple[float, float]], queue_pct: Mapping[str, Sequence[tuple[float, float]]],
                path: Path | str, title: str) -> None:
    """GPU allocation over time, in all and per queue (step plots, hours on the x axis)."""
    fig, ax = plt.subplots(figsize=(9, 5))
    if allocation_pct:
        ax.step([t / 3600 for t, _ in allocation_pct], [v for _, v in allocation_pct], where="post",
                label="all queues", linewidth=1.8, color="black")
    for queue, series in sorted(queue_pct.items()):
        ax.step([t / 3600 for t, _ in series], [v for _, v in series], where="post", label=queue, linewidth=1)
    ax.set_xlabel("simulated time (hours)")
    ax.set_ylabel("GPU allocated (% of capacity)")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
