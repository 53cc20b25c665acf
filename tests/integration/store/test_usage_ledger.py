"""The usage ledger's upsert on SQLite and PostgreSQL: new keys are inserted, existing ones added to (never
replaced), and reads return the hours overlapping a window, stored rows plus unflushed counters, per project."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError
from tests.support.databases import fresh_database

from gpupool.domain.usage import LedgerEntry
from gpupool.server.usage_ledger import HeldShare, UsageLedger
from gpupool.store.db import Database
from gpupool.store.orm import ProjectRow, UserRow
from gpupool.store.repos import usage_ledger

H = 3600.0 * 1000  # an hour boundary


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    def prepared(db: Database) -> Database:
        db.migrate()
        with db.session() as session:
            session.add_all([ProjectRow(id=101, name="vision", created_at=0.0),
                             ProjectRow(id=102, name="nlp", created_at=0.0),
                             UserRow(id=201, name="ann", created_at=0.0), UserRow(id=202, name="bob", created_at=0.0)])
        return db

    with fresh_database(request.param, tmp_path) as url:
        db = prepared(Database(url))
        yield db
        db.dispose()


def _read(db: Database, readable: frozenset[int] | None = None, pending: dict | None = None) -> list[LedgerEntry]:
    with db.session(write=False) as session:
        return usage_ledger.entries(session, readable, H, H + 7200.0, pending or {})


def test_upsert_inserts_then_adds_to_the_counters(database: Database) -> None:
    with database.session() as session:
        usage_ledger.add(session, {(H, 101, 201): (10.0, 0.0, 20.0), (H, 102, 202): (1.0, 4.0, 5.0)})
    with database.session() as session:
        usage_ledger.add(session, {(H, 101, 201): (5.0, 2.0, 8.0), (H + 3600.0, 101, 201): (3.0, 0.0, 3.0)})
    assert _read(database) == [LedgerEntry(H, "vision", "ann", 15.0, 2.0, 28.0),
                               LedgerEntry(H, "nlp", "bob", 1.0, 4.0, 5.0),
                               LedgerEntry(H + 3600.0, "vision", "ann", 3.0, 0.0, 3.0)]
    # a member reads only their project; unflushed counters are added to the stored ones
    assert _read(database, frozenset({102}), {(H, 102, 202): (1.0, 1.0, 1.0), (H, 101, 201): (9.0, 9.0, 9.0)}) == [
        LedgerEntry(H, "nlp", "bob", 2.0, 5.0, 6.0)]


def test_a_rolled_back_flush_keeps_its_counters_and_a_committed_one_clears_them(database: Database) -> None:
    ledger = UsageLedger(flush_interval_s=60.0)
    share = HeldShare(1, 101, 201, started_at=H, node="m", index=0, milli=500)
    ledger.observe([share], {("m", 0): 80.0}, H + 10.0, idle_max_pct=5.0)  # starts the replica's timer
    ledger.observe([share], {("m", 0): 80.0}, H + 30.0, idle_max_pct=5.0)  # 20 s x 0.5 card at 80 %
    assert ledger.pending() == {(H, 101, 201): pytest.approx((8.0, 0.0, 10.0))}
    assert not ledger.flush_if_due(database, H + 30.0)  # the first interval has not passed
    broken = Database(f"sqlite:///{Path('/nonexistent/dir/x.db')}")
    with pytest.raises(OperationalError):  # the database cannot be opened: the transaction fails
        ledger.flush(broken, H + 95.0)
    assert ledger.pending() == {(H, 101, 201): pytest.approx((8.0, 0.0, 10.0))}
    assert ledger.flush_if_due(database, H + 95.0)
    assert ledger.pending() == {}
    assert not ledger.flush_if_due(database, H + 200.0)  # nothing new: no write
    assert _read(database) == [LedgerEntry(H, "vision", "ann", pytest.approx(8.0), 0.0, pytest.approx(10.0))]


def test_time_is_split_at_hour_boundaries_and_gaps_are_not_observed(database: Database) -> None:
    ledger = UsageLedger(flush_interval_s=60.0)
    share = HeldShare(1, 101, 201, started_at=H, node="m", index=0, milli=1000)
    ledger.observe([share], {("m", 0): 2.0}, H + 3590.0, idle_max_pct=5.0)
    ledger.observe([share], {("m", 0): 2.0}, H + 3610.0, idle_max_pct=5.0)  # 10 s in each hour, idle
    ledger.observe([share], {("m", 0): None}, H + 3620.0, idle_max_pct=5.0)  # no reading: not observed
    ledger.observe([share], {("m", 0): 100.0}, H + 7100.0, idle_max_pct=5.0)  # a long gap counts 900 s at most
    assert ledger.pending() == {(H, 101, 201): pytest.approx((0.2, 10.0, 10.0)),
                                (H + 3600.0, 101, 201): pytest.approx((900.2, 10.0, 910.0))}


def test_counters_of_a_deleted_project_are_dropped_not_retried_forever(database: Database) -> None:
    ledger = UsageLedger(flush_interval_s=60.0)
    shares = [HeldShare(1, 101, 201, H, "m", 0, 1000), HeldShare(2, 999, 202, H, "m", 1, 1000)]  # 999: gone
    ledger.observe(shares, {("m", 0): 50.0, ("m", 1): 50.0}, H + 1.0, idle_max_pct=5.0)
    ledger.observe(shares, {("m", 0): 50.0, ("m", 1): 50.0}, H + 11.0, idle_max_pct=5.0)
    assert ledger.flush(database, H + 11.0)
    assert ledger.pending() == {}
    assert _read(database) == [LedgerEntry(H, "vision", "ann", pytest.approx(5.0), 0.0, pytest.approx(10.0))]
