"""The console's pure drawing functions: the pipeline graph's layout (columns by depth, rows ordered by what
each step needs, cycles and unknown needs refused) and its SVG (escaped names, links, one arrow per need),
the plots' round-number ticks and axes, and the gateway traffic read from a real metrics registry."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import pytest

from gpupool.console.graphs import BOX_H, BOX_W, GAP_X, GAP_Y, MARGIN, dag_svg, depths, layout
from gpupool.console.plots import MAX_POINTS, Series, nice_ticks, xy_plot
from gpupool.console.traffic import bound_text, traffic
from gpupool.server.gateway import GatewayMetrics

SVG = "{http://www.w3.org/2000/svg}"


def test_depth_is_the_longest_chain_of_needs() -> None:
    needs = {
        "fetch": [],
        "clean": ["fetch"],
        "stats": ["fetch"],
        "train": ["clean", "stats"],
        "report": ["fetch", "train"],
    }
    assert depths(needs) == {"fetch": 0, "clean": 1, "stats": 1, "train": 2, "report": 3}
    assert depths({}) == {}
    assert depths({"a": [], "b": []}) == {"a": 0, "b": 0}


@pytest.mark.parametrize(
    ("needs", "message"),
    [({"a": ["b"], "b": ["a"]}, "cycle"), ({"a": ["a"]}, "cycle"), ({"a": ["ghost"]}, "not a step")],
)
def test_cycles_and_unknown_needs_are_refused(needs: dict[str, list[str]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        depths(needs)


def test_layout_places_columns_left_to_right_and_orders_rows_by_parents() -> None:
    # b2 needs the lower parent (a2), b1 the upper one (a1): rows follow the parents, not the spec's order
    needs = {"a1": [], "a2": [], "b2": ["a2"], "b1": ["a1"], "c": ["b1", "b2"]}
    graph = layout(needs)
    place = {b.name: (b.column, b.row) for b in graph.boxes}
    assert place == {"a1": (0, 0), "a2": (0, 1), "b1": (1, 0), "b2": (1, 1), "c": (2, 0)}
    assert graph.box("c").x == MARGIN + 2 * (BOX_W + GAP_X) and graph.box("a2").y == MARGIN + BOX_H + GAP_Y
    assert graph.width == 2 * MARGIN + 3 * BOX_W + 2 * GAP_X and graph.height == 2 * MARGIN + 2 * BOX_H + GAP_Y
    assert set(graph.edges) == {("a2", "b2"), ("a1", "b1"), ("b1", "c"), ("b2", "c")}
    assert all(b.x + BOX_W <= graph.width - MARGIN and b.y + BOX_H <= graph.height - MARGIN for b in graph.boxes)


def test_a_wide_graph_keeps_every_box_apart() -> None:
    needs = {f"s{i}": [] for i in range(6)} | {"join": [f"s{i}" for i in range(6)]}
    graph = layout(needs)
    corners = [(b.x, b.y) for b in graph.boxes]
    assert len(set(corners)) == len(corners)
    assert graph.box("join").row == 0 and graph.box("join").column == 1


def test_the_svg_escapes_names_links_steps_and_draws_one_arrow_per_need() -> None:
    needs = {"prep": [], "train": ["prep"], "eval": ["train"]}
    title = 'run <script>alert(1)</script> & "x"'
    svg = dag_svg(layout(needs), {"prep": "succeeded", "train": "failed"}, {"prep": "/workloads/7"}, title)
    root = ET.fromstring(str(svg))  # well-formed XML: the injected title stayed text
    assert root.find(f"{SVG}title").text == title
    assert "<script>" not in str(svg)
    assert [p.get("class") for p in root.iter(f"{SVG}path") if p.get("class")] == ["edge", "edge"]
    groups = {g.find(f"{SVG}title").text: g.get("class") for g in root.iter(f"{SVG}g")}
    assert groups == {
        "prep: succeeded": "step step-succeeded",
        "train: failed": "step step-failed",
        "eval: waiting": "step step-waiting",
    }
    links = [a.get("href") for a in root.iter(f"{SVG}a")]
    assert links == ["/workloads/7"]  # only steps with a workload link


def test_long_names_are_shortened_in_the_box_but_whole_in_the_tooltip() -> None:
    name = "a-very-long-step-name-that-goes-on"
    root = ET.fromstring(str(dag_svg(layout({name: []}), {}, {}, "t")))
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert texts[0].endswith("…") and len(texts[0]) == 22
    assert root.find(f"{SVG}g/{SVG}title").text == f"{name}: waiting"


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0, 1, [0, 0.25, 0.5, 0.75, 1]),
        (0.13, 0.91, [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (3, 3, [2, 2.5, 3, 3.5, 4]),
        (-7, 42, [-20, 0, 20, 40, 60]),
        (1, 200, [0, 50, 100, 150, 200]),
    ],
)
def test_ticks_are_round_and_cover_the_range(low: float, high: float, expected: list[float]) -> None:
    ticks = nice_ticks(low, high)
    assert ticks == pytest.approx(expected)
    assert ticks[0] <= min(low, high) and ticks[-1] >= max(low, high)


def test_whole_ticks_for_counts() -> None:
    assert nice_ticks(0, 1, whole=True) == [0, 1]
    assert nice_ticks(1, 3, whole=True) == [1, 2, 3]
    assert nice_ticks(0, 37, whole=True) == [0, 10, 20, 30, 40]
    assert nice_ticks(4, 4, whole=True) == [3, 4, 5]


def test_ticks_refuse_infinite_bounds() -> None:
    with pytest.raises(ValueError, match="finite"):
        nice_ticks(0, math.inf)


def test_the_plot_has_labelled_axes_and_a_point_per_value() -> None:
    series = [
        Series("best", "best", [(0, 0.9), (1, 0.5), (2, 0.5)], joined=True),
        Series("done", "complete", [(0, 0.9), (1, 0.5), (2, 0.7), (3, math.nan)]),
    ]
    svg = str(xy_plot(series, "trial number", "loss <nats>", "loss per trial", "p1"))
    root = ET.fromstring(svg)
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "trial number" in texts and "loss <nats>" in texts  # escaped, then read back as text
    assert len(list(root.iter(f"{SVG}circle"))) == 6  # the NaN point is left out
    assert len(list(root.iter(f"{SVG}polyline"))) == 1
    ys = sorted(float(c.get("cy")) for c in root.iter(f"{SVG}circle"))
    assert ys[0] < ys[-1]  # 0.9 is drawn above 0.5
    empty = str(xy_plot([Series("x", "complete", [])], "step", "loss", "nothing", "p2"))
    assert "no values reported yet" in empty


def test_traffic_reads_the_gateway_metrics_of_one_service() -> None:
    metrics = GatewayMetrics()
    for code, seconds in (("200", 0.02), ("200", 0.04), ("200", 0.3), ("503", 700.0)):
        metrics.requests.labels("1", "chat", code).inc()
        metrics.total.labels("1", "chat").observe(seconds)
    metrics.chunks.labels("1", "chat").inc(42)
    metrics.first_byte.labels("1", "chat").observe(0.01)
    metrics.requests.labels("1", "other", "200").inc(5)
    metrics.requests.labels("2", "chat", "200").inc(7)  # another project's service of the same name
    metrics.total.labels("2", "chat").observe(0.5)
    seen = traffic(metrics.registry, 1, "chat")
    assert (seen.requests, seen.by_status, seen.chunks) == (4, {"200": 3, "503": 1}, 42)
    assert seen.total.count == 4 and seen.total.mean_s == pytest.approx((0.02 + 0.04 + 0.3 + 700) / 4)
    assert seen.total.p50_le_s == 0.05 and seen.total.p95_le_s == math.inf
    assert seen.first_byte.count == 1 and seen.first_byte.p95_le_s == 0.01
    assert traffic(metrics.registry, 2, "chat").requests == 7 and traffic(metrics.registry, 2, "chat").chunks == 0
    nobody = traffic(metrics.registry, 1, "nobody")
    assert nobody.requests == 0 and nobody.total.count == 0
    assert [bound_text(v) for v in (None, 0.05, math.inf)] == ["-", "≤ 0.05 s", "above the largest bucket"]
    assert re.fullmatch(r"≤ [0-9.]+ s", bound_text(seen.total.p50_le_s))


@pytest.mark.parametrize(
    ("low", "high"),
    [
        (1e15, 1e15 + 0.125),  # closer together than the float spacing at their size lets a step advance
        (1e20, 1e20),  # one value too large for ±1 to widen the range
        (-1e308, 1e308),  # a range wider than the largest float
        (0, 5e-324),  # a range too narrow for any step
        (1.7e308, 1.7e308),
    ],
)
def test_ticks_end_for_any_finite_values(low: float, high: float) -> None:
    """Values are what trials report: any finite pair gives a short, increasing, finite list or a ValueError,
    never an endless loop."""
    try:
        ticks = nice_ticks(low, high)
    except ValueError as error:
        assert "cannot" in str(error)
        return
    assert 2 <= len(ticks) <= 4 * 5
    assert all(math.isfinite(t) for t in ticks) and ticks == sorted(set(ticks))
    assert ticks[0] <= low and ticks[-1] >= high


def test_a_plot_of_values_that_cannot_be_drawn_says_so() -> None:
    svg = str(xy_plot([Series("done", "complete", [(0, 1e15), (1, 1e15 + 0.125)])], "trial", "loss", "t", "p3"))
    root = ET.fromstring(svg)
    assert "cannot be drawn" in "".join(t.text or "" for t in root.iter(f"{SVG}text"))
    wide = str(xy_plot([Series("done", "complete", [(0, -1e308), (1, 1e308)])], "trial", "loss", "t", "p4"))
    assert "nan" not in wide and "inf" not in wide


def test_a_long_series_is_thinned_to_a_bounded_drawing() -> None:
    """A trial may report up to 10**9 steps: the plot draws at most MAX_POINTS of a series, first and last kept."""
    points = [(float(step), 1.0 / (step + 1)) for step in range(100_000)]
    svg = str(xy_plot([Series("t", "complete", points, joined=True)], "step", "loss", "curve", "p5", whole_x=True))
    root = ET.fromstring(svg)
    circles = list(root.iter(f"{SVG}circle"))
    assert 2 <= len(circles) <= MAX_POINTS and len(svg) < 200_000
    xs = [float(c.get("cx") or 0) for c in circles]
    assert xs == sorted(xs) and max(xs) > 600  # the last step is still drawn at the right end
    assert "1 point in" in "".join(t.text or "" for t in root.iter(f"{SVG}text"))  # it says it was thinned
