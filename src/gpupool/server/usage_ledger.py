"""The usage ledger's unflushed counters: the sampler adds each step's busy / idle / observed GPU-seconds per
(hour, project, user) here, and every `usage_flush_interval_s` (only when something was added) writes them to
the store in one small transaction, `INSERT ... ON CONFLICT DO UPDATE` adding to the stored counters (and
once more when the server stops cleanly).

Crash safety: the counters are cleared only once their transaction has committed, under `lock`, so a kill -9
loses at most the interval not yet flushed and never counts a sample twice (a rolled-back flush keeps its
counters for the next one). After a restart the first step of each replica only starts its timer: time while
the server was down is not observed. Usage reports read the stored rows and these counters under `lock`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gpupool.domain.usage import MAX_GAP_S, hour_split
from gpupool.store.db import Database
from gpupool.store.repos import usage_ledger
from gpupool.store.repos.usage_ledger import LedgerKey

log = logging.getLogger("gpupool.usage_ledger")


@dataclass(frozen=True, slots=True)
class HeldShare:
    """One replica's share of one card, as the sampler saw it: whose it is and since when it runs."""

    replica_id: int
    project_id: int
    user_id: int
    started_at: float
    node: str
    index: int
    milli: int


class UsageLedger:
    """Unflushed counters (see the module docstring); thread-safe."""

    def __init__(self, flush_interval_s: float) -> None:
        self.flush_interval_s = flush_interval_s
        self.lock = threading.Lock()
        self._pending: dict[LedgerKey, tuple[float, float, float]] = {}
        self._last_seen: dict[int, float] = {}
        self._next_flush: float | None = None

    def observe(self, shares: Iterable[HeldShare], utilisation: Mapping[tuple[str, int], float | None], now: float,
                idle_max_pct: float) -> None:
        """Count each share since the replica's previous step (at most `MAX_GAP_S`, not before it started) at
        its card's utilisation now; a card with no reading is not observed."""
        shares = list(shares)
        with self.lock:
            previous, self._last_seen = self._last_seen, {s.replica_id: now for s in shares}
            for share in shares:
                seen = previous.get(share.replica_id)
                pct = utilisation.get((share.node, share.index))
                if seen is None or pct is None:
                    continue
                start = max(seen, share.started_at, now - MAX_GAP_S)
                for hour, seconds in hour_split(start, now):
                    self._add((hour, share.project_id, share.user_id), share.milli / 1000 * seconds, pct,
                              idle_max_pct)

    def _add(self, key: LedgerKey, gpu_s: float, pct: float, idle_max_pct: float) -> None:
        busy, idle, observed = self._pending.get(key, (0.0, 0.0, 0.0))
        self._pending[key] = (busy + gpu_s * min(max(pct, 0.0), 100.0) / 100,
                              idle + (gpu_s if pct <= idle_max_pct else 0.0), observed + gpu_s)

    def pending(self) -> dict[LedgerKey, tuple[float, float, float]]:
        """A copy of the unflushed counters (call with `lock` held to pair it with a read of the store)."""
        return dict(self._pending)

    def flush_if_due(self, db: Database, now: float) -> bool:
        """Write the counters when `flush_interval_s` has passed since the last flush and some were added;
        True when a flush was written."""
        if self._next_flush is None:
            self._next_flush = now + self.flush_interval_s
        if now < self._next_flush:
            return False
        return self.flush(db, now)

    def flush(self, db: Database, now: float) -> bool:
        """Write the counters now (one transaction), clearing them once it committed; True when written."""
        with self.lock:
            if not self._pending:
                return False
            with db.session() as session:
                usage_ledger.add(session, self._pending)
            self._pending = {}
            self._next_flush = now + self.flush_interval_s
        return True
