"""X-Y plots drawn on the server as SVG (a sweep's objective by trial, its best trial's reports by step):
points and lines per series, both axes with round-number ticks and a label naming the quantity and unit.

Only numbers and escaped text go into the SVG."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

# Pixels: wide enough for five x ticks and a y tick such as "-0.0125", readable when scaled to a phone.
WIDTH, HEIGHT, LEFT, BOTTOM, TOP, RIGHT = 640, 260, 64, 44, 12, 16
TICKS = 5  # ticks per axis: enough to read a value off, few enough not to crowd at phone width
# Points one series draws: a trial may report up to 10**9 steps, and past a few per pixel of the 640-pixel-wide
# plot more points add bytes, not information.
MAX_POINTS = 2000
MAX_TICKS = 4 * TICKS  # a round step gives at most about TICKS + 2 ticks; more means floats lost precision


@dataclass(frozen=True, slots=True)
class Series:
    """One set of points: its legend name, CSS class (colour), points (x, y) and whether they are joined."""

    name: str
    css: str
    points: Sequence[tuple[float, float]]
    joined: bool = False


def nice_ticks(low: float, high: float, count: int = TICKS, whole: bool = False) -> list[float]:
    """About `count` round values (1, 2, 2.5 or 5 times a power of ten apart) covering low..high; with
    `whole`, only whole numbers (for counts such as trial numbers and steps). The values are what workloads
    report, so any finite pair ends: ValueError ("cannot ...") when no such list exists in floats (values
    closer together than floats at their size can step, or a range wider than the largest float)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("ticks need finite bounds")
    if high < low:
        low, high = high, low
    if high == low:
        pad = max(1.0, abs(low) * 1e-6)  # ±1 for ordinary values; relative where 1 is below the float spacing
        low, high = low - pad, high + pad
    parts = max(count - 1, 1)
    raw = high / parts - low / parts  # divided first: high - low may overflow
    if not (math.isfinite(raw) and raw > 0):
        raise ValueError(f"ticks cannot cover {low:g}..{high:g} in floating point")
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    if whole:
        step = max(1.0, math.ceil(step))
    first = math.floor(low / step) * step
    steps = math.ceil(high / step - first / step)
    if not 0 < steps <= MAX_TICKS:
        raise ValueError(f"ticks cannot cover {low:g}..{high:g} in floating point")
    ticks = [round(first + i * step, 12) for i in range(steps + 1)]
    ordered = all(a < b for a, b in itertools.pairwise(ticks))
    if not (ordered and math.isfinite(ticks[0]) and math.isfinite(ticks[-1] - ticks[0]) and ticks[-1] >= high):
        raise ValueError(
            f"ticks cannot cover {low:g}..{high:g} in floating point: the values are too close "
            "together for their size, or too large"
        )
    return ticks


def thinned(points: Sequence[tuple[float, float]], most: int = MAX_POINTS) -> tuple[list[tuple[float, float]], int]:
    """At most `most` of the points, evenly spaced, the first and the last kept; and the spacing (1: all)."""
    if len(points) <= most:
        return list(points), 1
    every = math.ceil((len(points) - 1) / (most - 1))
    kept = list(points[::every])
    if kept[-1] != points[-1]:
        kept[-1] = points[-1]
    return kept, every


def _tick_text(value: float) -> str:
    return f"{value:.4g}"


def xy_plot(
    series: Sequence[Series], x_label: str, y_label: str, title: str, plot_id: str, whole_x: bool = False
) -> Markup:
    """The series on one pair of axes (ranges covering every point), with gridlines, tick values, the axis
    labels and a title (the SVG's accessible name); `whole_x`: the x values are counts (whole-number ticks).
    An empty plot says there is nothing to draw yet."""
    points = [p for s in series for p in s.points if math.isfinite(p[0]) and math.isfinite(p[1])]
    head = (
        f'<svg class="chart plot" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="{plot_id}" '
        f'xmlns="http://www.w3.org/2000/svg"><title id="{plot_id}">{escape(title)}</title>'
    )
    if not points:
        return Markup(
            head + f'<text class="axis" x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">'
            "no values reported yet</text></svg>"
        )
    try:
        xs = nice_ticks(min(p[0] for p in points), max(p[0] for p in points), whole=whole_x)
        ys = nice_ticks(min(p[1] for p in points), max(p[1] for p in points))
    except ValueError as error:  # reported values floats cannot plot: say so (the table lists them)
        return Markup(
            head + f'<text class="axis" x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">'
            f"these values cannot be drawn: {escape(str(error))}</text></svg>"
        )
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(v: float) -> float:
        return LEFT + plot_w * (v - xs[0]) / (xs[-1] - xs[0])

    def y(v: float) -> float:
        return TOP + plot_h * (1 - (v - ys[0]) / (ys[-1] - ys[0]))

    parts = [head]
    for v in ys:
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>'
            f'<text class="tick" x="{LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{_tick_text(v)}</text>'
        )
    for v in xs:
        parts.append(
            f'<text class="tick" x="{x(v):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">{_tick_text(v)}</text>'
        )
    parts.append(
        f'<text class="axis" x="{LEFT + plot_w / 2:.0f}" y="{HEIGHT - 6}" text-anchor="middle">{escape(x_label)}</text>'
    )
    parts.append(
        f'<text class="axis" transform="translate(14 {TOP + plot_h / 2:.0f}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    spacing = 1
    for s in series:
        finite = [(a, b) for a, b in s.points if math.isfinite(a) and math.isfinite(b)]
        kept, every = thinned(finite)
        spacing = max(spacing, every)
        shown = [(x(a), y(b)) for a, b in kept]
        if s.joined and len(shown) > 1:
            coords = " ".join(f"{a:.1f},{b:.1f}" for a, b in shown)
            parts.append(f'<polyline class="{escape(s.css)}" points="{coords}"/>')
        parts.extend(f'<circle class="{escape(s.css)}" cx="{a:.1f}" cy="{b:.1f}" r="3.5"/>' for a, b in shown)
    if spacing > 1:
        parts.append(
            f'<text class="tick" x="{WIDTH - RIGHT}" y="{TOP + 10}" text-anchor="end">'
            f"1 point in {spacing} shown</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))
