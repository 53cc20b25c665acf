"""A service's traffic as the gateway counted it (its Prometheus registry, `GatewayMetrics`): requests by HTTP
status, streamed chunks (about one per token for SSE), and latency (mean, and the median and 95th percentile
as the histogram bucket they fall in). Counts start when the server starts, as the registry does. The rate
charts draw the durable per-minute series instead (`server.service_traffic`), which a restart keeps."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from markupsafe import Markup
from prometheus_client import CollectorRegistry

from gpupool.console.plots import Series, xy_plot
from gpupool.server.service_traffic import MINUTE_S, minute_of

REQUESTS = "gpupool_service_requests"
CHUNKS = "gpupool_service_stream_chunks"
FIRST_BYTE = "gpupool_service_time_to_first_byte_seconds"
TOTAL = "gpupool_service_request_seconds"


@dataclass(frozen=True, slots=True)
class Latency:
    """One latency histogram of a service: how many requests, the mean, and the upper bounds of the buckets
    holding the median and the 95th percentile (seconds; None without requests, inf beyond the last bucket)."""

    count: int = 0
    mean_s: float | None = None
    p50_le_s: float | None = None
    p95_le_s: float | None = None


@dataclass(frozen=True, slots=True)
class Traffic:
    """What the gateway counted for one service since the server started."""

    requests: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    chunks: int = 0
    first_byte: Latency = Latency()
    total: Latency = Latency()


def _quantile_bound(buckets: list[tuple[float, float]], count: float, q: float) -> float | None:
    """The upper bound of the first cumulative bucket holding the q-quantile."""
    if count <= 0:
        return None
    return next((bound for bound, seen in sorted(buckets) if seen >= q * count), math.inf)


def _latency(samples: Iterable[tuple[str, dict[str, str], float]], base: str) -> Latency:
    buckets, count, total = [], 0.0, 0.0
    for name, labels, value in samples:
        if name == f"{base}_bucket":
            buckets.append((float(labels["le"]), value))
        elif name == f"{base}_count":
            count = value
        elif name == f"{base}_sum":
            total = value
    if count <= 0:
        return Latency()
    return Latency(
        int(count), total / count, _quantile_bound(buckets, count, 0.5), _quantile_bound(buckets, count, 0.95)
    )


def traffic(registry: CollectorRegistry, project_id: int, service: str) -> Traffic:
    """The counts of service `service` of project `project_id` (as the gateway labels them) in `registry`."""
    samples = [
        (s.name, dict(s.labels), s.value)
        for family in registry.collect()
        for s in family.samples
        if s.labels.get("service") == service and s.labels.get("project_id") == str(project_id)
    ]
    by_status: dict[str, int] = {}
    chunks = 0
    for name, labels, value in samples:
        if name == f"{REQUESTS}_total":
            by_status[labels["code"]] = by_status.get(labels["code"], 0) + int(value)
        elif name == f"{CHUNKS}_total":
            chunks += int(value)
    return Traffic(
        sum(by_status.values()),
        dict(sorted(by_status.items())),
        chunks,
        _latency(samples, FIRST_BYTE),
        _latency(samples, TOTAL),
    )


def bound_text(seconds: float | None) -> str:
    """A percentile's bucket bound as text: '≤ 0.25 s', 'above the largest bucket', or '-' without requests."""
    if seconds is None:
        return "-"
    if math.isinf(seconds):
        return "above the largest bucket"
    return f"≤ {seconds:g} s"


# The rate charts' window: the last three hours, one point a minute (180 per line): a morning's pattern at a
# glance, each point still a few pixels apart on the 640-pixel plot.
RATE_WINDOW_MIN = 180


@dataclass(frozen=True, slots=True)
class Rates:
    """The rate charts of a service and, as text, what they show: totals over the window and the busiest
    minute's requests."""

    requests_svg: Markup
    tokens_svg: Markup
    requests: int
    errors: int
    tokens: int
    busiest: int


def rate_charts(per_minute: Mapping[float, tuple[int, int, int]], now: float, name: str) -> Rates:
    """Two plots of the service's durable per-minute series over the last RATE_WINDOW_MIN minutes (a minute
    without a row counted 0): requests and errors (5xx) per minute, and streamed chunks per minute (about
    one per token). The x axis is minutes before now."""
    current = minute_of(now)
    minutes = [current - MINUTE_S * back for back in range(RATE_WINDOW_MIN - 1, -1, -1)]
    counts = [per_minute.get(m, (0, 0, 0)) for m in minutes]
    totals = [sum(c[i] for c in counts) for i in range(3)]
    busiest = max(c[0] for c in counts)
    xs = [(m - current) / MINUTE_S for m in minutes]
    x_label = "minutes before now"
    if not any(c != (0, 0, 0) for c in counts):  # nothing in the window: say so instead of a flat line
        xs, counts = [], []
    requests = xy_plot(
        [
            Series("requests", "requests", [(x, float(c[0])) for x, c in zip(xs, counts, strict=True)], joined=True),
            Series("errors (5xx)", "errors", [(x, float(c[1])) for x, c in zip(xs, counts, strict=True)], joined=True),
        ],
        x_label,
        "requests per minute",
        f"Requests and errors per minute of service {name}, last {RATE_WINDOW_MIN // 60} hours",
        "rate-title",
        whole_x=True,
    )
    tokens = xy_plot(
        [Series("chunks", "tokens", [(x, float(c[2])) for x, c in zip(xs, counts, strict=True)], joined=True)],
        x_label,
        "streamed chunks per minute",
        f"Streamed chunks (about one per token) per minute of service {name}, last {RATE_WINDOW_MIN // 60} hours",
        "tokens-title",
        whole_x=True,
    )
    return Rates(requests, tokens, totals[0], totals[1], totals[2], busiest)
