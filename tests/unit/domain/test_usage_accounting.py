"""Usage accounting arithmetic: allocated GPU-hours split at period boundaries, busy and idle from samples."""

from __future__ import annotations

import datetime as dt

import pytest

from gpupool.domain.usage import (
    Allocation,
    CardShare,
    LedgerEntry,
    UtilPoint,
    account,
    hour_split,
    merge_ledger,
    next_period,
    period_start,
)

DAY0 = dt.datetime(2026, 3, 2, tzinfo=dt.UTC).timestamp()  # a Monday, 00:00 UTC
H = 3600.0


def alloc(project: str, user: str, start: float, end: float, *cards: tuple[str, int, int]) -> Allocation:
    return Allocation(project, user, start, end, tuple(CardShare(*c) for c in cards))


def test_period_starts_are_utc_calendar_periods() -> None:
    wednesday_noon = DAY0 + 2 * 86400 + 12 * H
    assert period_start(wednesday_noon, "day") == DAY0 + 2 * 86400
    assert period_start(wednesday_noon, "week") == DAY0
    assert period_start(wednesday_noon, "month") == dt.datetime(2026, 3, 1, tzinfo=dt.UTC).timestamp()
    assert next_period(dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp(), "month") == \
        dt.datetime(2027, 1, 1, tzinfo=dt.UTC).timestamp()
    with pytest.raises(ValueError, match="unknown period"):
        period_start(DAY0, "year")


def test_allocated_hours_are_split_at_midnight_and_grouped() -> None:
    # vision: 2 whole GPUs from 22:00 to 02:00 -> 2 h x 2 = 4 GPU-h on day 0 and 4 GPU-h on day 1;
    # nlp: half a GPU for 3 h on day 1 -> 1.5 GPU-h
    rows = account([alloc("vision", "ann", DAY0 + 22 * H, DAY0 + 26 * H, ("n1", 0, 1000), ("n1", 1, 1000)),
                    alloc("nlp", "bob", DAY0 + 30 * H, DAY0 + 33 * H, ("n1", 2, 500))], {}, [1, 2],
                   by="project", period="day", since=DAY0, until=DAY0 + 3 * 86400, idle_max_pct=5)
    got = [(r.period_start - DAY0, r.group, r.allocated_gpu_h, sorted(r.workloads)) for r in rows]
    assert got == [(0, "vision", 4.0, [1]), (86400, "nlp", 1.5, [2]), (86400, "vision", 4.0, [1])]
    assert all(r.busy_gpu_h == 0 and r.observed_gpu_h == 0 for r in rows)  # no samples: nothing observed


def test_window_clips_allocations_and_users_group_across_projects() -> None:
    # window starts at 01:00: ann's run 00:00-02:00 counts 1 h; her other run 3 h x 1 GPU; by user -> 4 GPU-h
    rows = account([alloc("vision", "ann", DAY0, DAY0 + 2 * H, ("n1", 0, 1000)),
                    alloc("nlp", "ann", DAY0 + 5 * H, DAY0 + 8 * H, ("n2", 0, 1000))], {},
                   by="user", period="week", since=DAY0 + H, until=DAY0 + 86400, idle_max_pct=5)
    assert [(r.group, r.allocated_gpu_h) for r in rows] == [("ann", 4.0)]


def test_busy_and_idle_hours_come_from_utilisation_points() -> None:
    # one GPU held 0:00-4:00; points each hour: 100%, 50%, 0%, then a point at 3:00 at 2% lasting to the end.
    # busy = 1 h x (1.0 + 0.5 + 0 + 0.02) = 1.52 GPU-h; idle (<= 5%) = 2 h (the 0% and 2% hours)
    points = [UtilPoint(DAY0 + i * H, pct) for i, pct in enumerate((100.0, 50.0, 0.0, 2.0))]
    (row,) = account([alloc("vision", "ann", DAY0, DAY0 + 4 * H, ("n1", 0, 1000))], {("n1", 0): points},
                     by="project", period="day", since=DAY0, until=DAY0 + 86400, idle_max_pct=5, max_gap_s=H)
    assert row.allocated_gpu_h == pytest.approx(4.0)
    assert row.observed_gpu_h == pytest.approx(4.0)
    assert row.busy_gpu_h == pytest.approx(1.52)
    assert row.idle_gpu_h == pytest.approx(2.0)


def test_a_gap_longer_than_the_limit_is_unobserved_and_shares_scale() -> None:
    # a quarter share held 0:00-10:00; points at 0:00 (80%) and 9:00 (80%): the first lasts at most 1 h (the
    # gap limit), the second 1 h to the end -> observed 2 h x 0.25 = 0.5 GPU-h, busy 0.5 x 0.8 = 0.4
    points = [UtilPoint(DAY0, 80.0), UtilPoint(DAY0 + 9 * H, 80.0), UtilPoint(DAY0 + 11 * H, 80.0)]
    (row,) = account([alloc("p", "u", DAY0, DAY0 + 10 * H, ("n1", 3, 250))], {("n1", 3): points},
                     by="project", period="month", since=DAY0 - 86400, until=DAY0 + 86400, idle_max_pct=5,
                     max_gap_s=H)
    assert row.allocated_gpu_h == pytest.approx(2.5)
    assert row.observed_gpu_h == pytest.approx(0.5)
    assert row.busy_gpu_h == pytest.approx(0.4)
    assert row.idle_gpu_h == 0


def test_unknown_grouping_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown grouping"):
        account([], {}, by="queue", period="day", since=0, until=1, idle_max_pct=5)


def test_hour_split_cuts_at_every_hour_boundary() -> None:
    assert list(hour_split(DAY0 + 0.5 * H, DAY0 + 2.25 * H)) == [(DAY0, 0.5 * H), (DAY0 + H, H),
                                                                 (DAY0 + 2 * H, 0.25 * H)]
    assert list(hour_split(DAY0, DAY0)) == []


def test_ledger_entries_add_to_their_period_and_group_and_create_missing_rows() -> None:
    allocated = account([alloc("vision", "ann", DAY0, DAY0 + 2 * H, ("m", 0, 1000))], {}, by="user",
                        period="day", since=DAY0, until=DAY0 + 30 * H, idle_max_pct=5.0)
    entries = [LedgerEntry(DAY0, "vision", "ann", 1800.0, 0.0, 3600.0),
               LedgerEntry(DAY0 + H, "vision", "ann", 0.0, 3600.0, 3600.0),
               LedgerEntry(DAY0 + 25 * H, "vision", "bob", 360.0, 0.0, 720.0)]  # the next day, no allocation row
    rows = merge_ledger(allocated, entries, by="user", period="day")
    assert [(r.period_start, r.group) for r in rows] == [(DAY0, "ann"), (DAY0 + 86400, "bob")]
    assert (rows[0].allocated_gpu_h, rows[0].busy_gpu_h, rows[0].idle_gpu_h, rows[0].observed_gpu_h) == \
        pytest.approx((2.0, 0.5, 1.0, 2.0))
    assert (rows[1].allocated_gpu_h, rows[1].busy_gpu_h, rows[1].observed_gpu_h) == pytest.approx((0.0, 0.1, 0.2))
    by_project = merge_ledger([], entries, by="project", period="month")
    assert [(r.group, round(r.observed_gpu_h, 6)) for r in by_project] == [("vision", 2.2)]
