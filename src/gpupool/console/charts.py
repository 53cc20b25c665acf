"""The overview's 24-hour chart, drawn on the server as SVG: GPUs allocated (from the replicas' runs in the
store) and GPUs busy (the sampler's utilisation of every card, summed), per 15-minute step, against the
pool's card count. Only numbers go into the SVG; labels are fixed text."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup
from sqlalchemy.orm import Session

from gpupool.server.gpu_runtime import GpuRuntime
from gpupool.server.services.usage import allocations
from gpupool.store.repos import nodes

STEP_S = 900.0  # 15-minute steps: the sampler's coarsest kept resolution, 96 points a day
WIDTH, HEIGHT, LEFT, BOTTOM, TOP, RIGHT = 720, 220, 48, 28, 12, 12  # pixels, chosen to read at 1280 px and phone width


@dataclass(frozen=True, slots=True)
class Activity:
    """The chart's data (GPUs per step) and its SVG."""

    capacity: int
    allocated: list[float]
    busy: list[float | None]
    svg: Markup


def _steps(since: float, until: float) -> list[float]:
    count = max(1, int((until - since) // STEP_S))
    return [until - (count - i) * STEP_S for i in range(count)]


def allocated_per_step(session: Session, since: float, until: float) -> list[float]:
    """GPUs allocated in each step (mean over the step: shares held x time held / step length)."""
    starts = _steps(since, until)
    held, _ = allocations(session, None, since, until, until)
    out = [0.0] * len(starts)
    for alloc in held:
        share = sum(c.milli for c in alloc.cards) / 1000
        for i, start in enumerate(starts):
            overlap = min(alloc.end, start + STEP_S) - max(alloc.start, start)
            if overlap > 0:
                out[i] += share * overlap / STEP_S
    return out


def busy_per_step(runtime: GpuRuntime, cards: Sequence[tuple[str, int]], since: float,
                  until: float) -> list[float | None]:
    """GPUs busy in each step: the cards' mean utilisation summed (1 = one card fully busy); None for a step
    without any sample."""
    starts = _steps(since, until)
    sums: list[float] = [0.0] * len(starts)
    seen: list[bool] = [False] * len(starts)
    with runtime.reading():
        for node, index in cards:
            per_step: dict[int, list[float]] = {}
            for p in runtime.series.query(("gpu", node, str(index), "utilization_pct"), since, until):
                i = int((p.t - starts[0]) // STEP_S)
                if 0 <= i < len(starts):
                    per_step.setdefault(i, []).append(p.mean)
            for i, values in per_step.items():
                sums[i] += sum(values) / len(values) / 100
                seen[i] = True
    return [s if seen[i] else None for i, s in enumerate(sums)]


def activity_chart(session: Session, runtime: GpuRuntime, since: float, until: float) -> Activity:
    """The last (until - since) seconds as an SVG line chart, GPUs on the y axis and time (UTC) on the x."""
    cards = [(row.name, int(g["index"])) for row in nodes.list_nodes(session) for g in row.gpus]
    allocated = allocated_per_step(session, since, until)
    busy = busy_per_step(runtime, cards, since, until)
    return Activity(len(cards), allocated, busy, _svg(len(cards), allocated, busy, until))


def _svg(capacity: int, allocated: list[float], busy: list[float | None], until: float) -> Markup:
    top = max([float(capacity), 1.0, *allocated, *(b for b in busy if b is not None)])
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(i: int) -> float:
        return LEFT + plot_w * i / max(1, len(allocated) - 1)

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / top)

    def line(values: Sequence[float | None]) -> str:
        return " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values) if v is not None)

    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             'aria-labelledby="chart-title" xmlns="http://www.w3.org/2000/svg">',
             '<title id="chart-title">GPUs allocated and busy over the last 24 hours</title>']
    for k in range(5):
        v = top * k / 4
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>'
                     f'<text class="tick" x="{LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
    for hours_ago in (24, 18, 12, 6, 0):
        i = len(allocated) - 1 - int(hours_ago * 3600 / STEP_S)
        when = dt.datetime.fromtimestamp(until - hours_ago * 3600, dt.UTC).strftime("%H:%M")
        parts.append(f'<text class="tick" x="{x(max(i, 0)):.1f}" y="{HEIGHT - 8}" text-anchor="middle">{when}</text>')
    parts.append(f'<text class="axis" x="4" y="{TOP + 8}">GPUs</text>')
    parts.append(f'<line class="capacity" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(capacity):.1f}" '
                 f'y2="{y(capacity):.1f}"/>')
    parts.append(f'<polyline class="allocated" points="{line(allocated)}"/>')
    parts.append(f'<polyline class="busy" points="{line(busy)}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))
