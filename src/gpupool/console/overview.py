"""The overview's figures: GPUs by node and model, queue bars, and the commonest reasons work is pending."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from sqlalchemy.orm import Session

from gpupool.api.gpu_schemas import GpuNow
from gpupool.api.schemas import Queue
from gpupool.server.services import workloads
from gpupool.server.services.auth import Principal

TOP_REASONS = 5  # reasons the overview lists (a glance, not a report); the rest are summed up as "other reasons"


@dataclass(frozen=True, slots=True)
class GpuTotals:
    """GPUs of one node and model (or of the whole pool when node is ""): whole cards, GPUs allocated (shares
    summed), cards busy (above the idle threshold) and cards allocated but idle (the waste)."""

    node: str
    model: str
    total: int
    allocated: float
    busy: int
    allocated_idle: int
    unsampled: int


def gpu_totals(gpus: list[GpuNow], idle_max_pct: float) -> list[GpuTotals]:
    """One line per (node, model), then the pool's total line (node "")."""
    groups: dict[tuple[str, str], list[GpuNow]] = {}
    for g in gpus:
        groups.setdefault((g.node, g.model), []).append(g)
    lines = [_totals(node, model, cards, idle_max_pct) for (node, model), cards in sorted(groups.items())]
    lines.append(_totals("", "all", gpus, idle_max_pct))
    return lines


def _totals(node: str, model: str, cards: list[GpuNow], idle_max_pct: float) -> GpuTotals:
    sampled = [g for g in cards if g.utilization_pct is not None]
    return GpuTotals(node, model, len(cards), sum(g.allocated_milli for g in cards) / 1000,
                     sum(1 for g in sampled if (g.utilization_pct or 0) > idle_max_pct),
                     sum(1 for g in sampled if g.allocated_milli and (g.utilization_pct or 0) <= idle_max_pct),
                     len(cards) - len(sampled))


def pending_reasons(session: Session, principal: Principal) -> tuple[list[tuple[str, int]], int]:
    """The commonest reasons the caller's visible pending workloads wait (count each), and how many wait."""
    page = workloads.list_workloads(session, principal, None, ["pending"], None, workloads.MAX_LIST, None)
    counts = Counter(w.pending_reason or "not yet considered by the scheduler" for w in page.items)
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_REASONS]
    rest = sum(counts.values()) - sum(n for _, n in top)
    return top + ([("other reasons", rest)] if rest else []), page.total


@dataclass(frozen=True, slots=True)
class QueueBar:
    """A queue's GPU bar, in GPUs and as percentages of the bar's scale (the largest of usage, guarantee and
    limit): usage within the guarantee, the borrowed part beyond it, and where the guarantee and limit lie."""

    name: str
    usage: float
    guarantee: float
    limit: float | None
    own_pct: float
    borrowed_pct: float
    guarantee_pct: float
    limit_pct: float | None
    running: int
    pending: int


def queue_bars(queues: list[Queue]) -> list[QueueBar]:
    """One bar per queue (GPU usage vs guarantee vs limit, the borrowed part marked)."""
    bars = []
    for q in queues:
        used, guaranteed = q.usage.gpu_milli / 1000, q.guaranteed.gpu_milli / 1000
        limit = None if q.limit.gpu_milli is None else q.limit.gpu_milli / 1000
        scale = max(used, guaranteed, limit or 0.0, 1.0)
        own = min(used, guaranteed)
        bars.append(QueueBar(q.name, used, guaranteed, limit, 100 * own / scale, 100 * (used - own) / scale,
                             100 * guaranteed / scale, None if limit is None else 100 * limit / scale,
                             q.running, q.pending))
    return bars
