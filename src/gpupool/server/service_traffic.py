"""A service's traffic per minute, durable: the gateway counts each request (an error when its HTTP status is
5xx) and each streamed chunk (about one per token) here, per (service, minute); the autoscaler's loop writes
the counters every FLUSH_INTERVAL_S (only when something was counted) in one small transaction that adds to
the stored rows (`INSERT ... ON CONFLICT DO UPDATE`) and deletes rows older than RETENTION_S; a clean stop
writes them too.

Crash safety, as the usage ledger's: counters taken for a write are dropped only once its transaction
committed (a failed write puts them back), so a kill -9 loses at most the last unwritten interval and never
counts a request twice. Counting takes only a short lock (the gateway never waits for the store); writes and
reads are serialised by a second lock, so a read sees each count once. Reads add the unwritten counters to the
stored ones, so the console's chart is current."""

from __future__ import annotations

import threading
from collections.abc import Callable

from gpupool.store.db import Database
from gpupool.store.repos import service_traffic
from gpupool.store.repos.service_traffic import Counts, TrafficKey

MINUTE_S = 60.0  # the series' bucket: fine enough to see a burst, coarse enough for a week of rows
# Counters are written once a minute: a crash loses at most the last minute of counts, and a busy gateway
# costs the store one small transaction a minute whatever its request rate.
FLUSH_INTERVAL_S = 60.0
# A week of minutes: enough to compare today with the same hour of last week, at most 10,080 rows per service.
RETENTION_S = 7 * 86400.0


def minute_of(at: float) -> float:
    """The start of the minute holding `at` (epoch seconds)."""
    return at // MINUTE_S * MINUTE_S


class TrafficSeries:
    """Unwritten per-minute counters (see the module docstring); thread-safe."""

    def __init__(self, clock: Callable[[], float], flush_interval_s: float = FLUSH_INTERVAL_S) -> None:
        self.clock = clock
        self.flush_interval_s = flush_interval_s
        self.lock = threading.Lock()  # guards the counters; held only to count or to copy them
        self._io = threading.Lock()  # one write or read of the store at a time
        self._pending: dict[TrafficKey, Counts] = {}
        self._next_flush: float | None = None

    def request(self, service_id: int, status: int) -> None:
        """Count one answered request of the service (an error when `status` is 5xx)."""
        self._add(service_id, 1, 1 if status >= 500 else 0, 0)

    def chunk(self, service_id: int) -> None:
        """Count one chunk of a response body streamed to a client."""
        self._add(service_id, 0, 0, 1)

    def _add(self, service_id: int, requests: int, errors: int, tokens: int) -> None:
        key = (service_id, minute_of(self.clock()))
        with self.lock:
            r, e, t = self._pending.get(key, (0, 0, 0))
            self._pending[key] = (r + requests, e + errors, t + tokens)

    def flush_if_due(self, db: Database) -> bool:
        """Write the counters when `flush_interval_s` has passed since the last write and some were counted."""
        now = self.clock()
        if self._next_flush is None:
            self._next_flush = now + self.flush_interval_s
        if now < self._next_flush:
            return False
        return self.flush(db)

    def flush(self, db: Database) -> bool:
        """Write the counters now and prune past the retention (one transaction); True when something was
        written. Counters of a failed write are kept for the next one."""
        now = self.clock()
        with self._io:
            with self.lock:
                taken, self._pending = self._pending, {}
            if not taken:
                return False
            try:
                with db.session() as session:
                    service_traffic.add(session, taken)
                    service_traffic.prune(session, minute_of(now - RETENTION_S))
            except BaseException:
                with self.lock:
                    for key, (r, e, t) in taken.items():
                        pr, pe, pt = self._pending.get(key, (0, 0, 0))
                        self._pending[key] = (pr + r, pe + e, pt + t)
                raise
            self._next_flush = now + self.flush_interval_s
        return True

    def series(self, db: Database, service_id: int, since: float) -> dict[float, Counts]:
        """The service's counts by minute from `since` on, stored and unwritten together."""
        with self._io:
            with self.lock:
                pending = dict(self._pending)
            with db.session(write=False) as session:
                return service_traffic.series(session, service_id, since, pending)
