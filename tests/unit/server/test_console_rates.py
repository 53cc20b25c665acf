"""The service page's rate charts: a point a minute over the window (a minute without a row is 0), totals and
the busiest minute as text, and a plot that says so when the window is empty."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from gpupool.console.traffic import RATE_WINDOW_MIN, rate_charts

SVG = "{http://www.w3.org/2000/svg}"
NOW = 1_800_000_030.0  # half a minute into a minute


def test_each_minute_of_the_window_is_a_point_and_the_totals_count_only_the_window() -> None:
    current = NOW // 60 * 60
    rows = {current: (5, 1, 40), current - 60 * 10: (2, 0, 0), current - 60 * RATE_WINDOW_MIN: (99, 99, 99)}
    rates = rate_charts(rows, NOW, "chat")
    assert (rates.requests, rates.errors, rates.tokens, rates.busiest) == (7, 1, 40, 5)
    plot = ET.fromstring(str(rates.requests_svg))
    lines = {p.get("class"): p.get("points").split() for p in plot.iter(f"{SVG}polyline")}
    assert set(lines) == {"requests", "errors"} and all(len(points) == RATE_WINDOW_MIN for points in lines.values())
    ys = [float(p.split(",")[1]) for p in lines["requests"]]
    assert ys[-1] == min(ys) and ys.count(max(ys)) == RATE_WINDOW_MIN - 2  # the peak now; zero elsewhere but one
    assert "minutes before now" in [t.text for t in plot.iter(f"{SVG}text")]


def test_an_empty_window_says_there_is_nothing_to_draw() -> None:
    rates = rate_charts({}, NOW, "chat")
    assert (rates.requests, rates.busiest) == (0, 0)
    assert "no values reported yet" in str(rates.requests_svg) and not re.search("<polyline", str(rates.tokens_svg))
