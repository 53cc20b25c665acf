"""Cron fire times in named timezones (DST gaps and folds), the fires of a downtime, catch-up decisions."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from gpupool.domain.schedules import MAX_MISSED_SCANNED, decide_fires, fires_between, next_fire_after

NY = ZoneInfo("America/New_York")


def at(text: str, tz: ZoneInfo = NY, fold: int = 0) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=tz, fold=fold).timestamp()


def test_a_skipped_wall_time_fires_once_at_the_change() -> None:
    # New York, 8 March 2026: 02:00 -> 03:00. "0,30 2 * * *" has two wall times in the gap; one fire, at 03:00
    fires = fires_between("0,30 2 * * *", "America/New_York", at("2026-03-07 12:00"), at("2026-03-09 12:00"))[0]
    assert fires == [at("2026-03-08 03:00"), at("2026-03-09 02:00"), at("2026-03-09 02:30")]
    assert next_fire_after("0,30 2 * * *", "America/New_York", at("2026-03-08 01:59")) == at("2026-03-08 03:00")
    assert next_fire_after("0,30 2 * * *", "America/New_York", at("2026-03-08 03:00")) == at("2026-03-09 02:00")


def test_a_repeated_wall_time_fires_once_even_when_the_worker_looks_from_the_second_pass_of_it() -> None:
    # New York, 1 November 2026: 02:00 -> 01:00; 01:30 happens twice
    first_0130 = at("2026-11-01 01:30")
    second_0110 = at("2026-11-01 01:10", fold=1)
    assert second_0110 > first_0130
    assert fires_between("30 1 * * *", "America/New_York", first_0130, second_0110)[0] == [first_0130]
    assert next_fire_after("30 1 * * *", "America/New_York", first_0130) == at("2026-11-02 01:30")


def test_a_long_downtime_is_scanned_back_from_now_only_so_far() -> None:
    fires, left_out = fires_between("* * * * *", "UTC", 0.0, 1_000_000_030.0)
    assert len(fires) == MAX_MISSED_SCANNED and left_out and fires[-1] == 1_000_000_020.0


def test_catch_up_decisions() -> None:
    due = [100.0, 200.0, 300.0]
    assert [d.run for d in decide_fires(due, 330.0, "none", 5)] == [False, False, True]  # 300 is on time
    assert [d.run for d in decide_fires(due, 400.0, "none", 5)] == [False, False, False]
    assert [d.run for d in decide_fires(due, 4000.0, "latest", 5)] == [False, False, True]
    assert [d.run for d in decide_fires(due, 4000.0, "all", 2)] == [False, True, True]
    assert decide_fires(due, 4000.0, "all", 2)[1].reason == "caught up after downtime"
    assert "not listed" in decide_fires(due, 4000.0, "latest", 5, left_out=True)[0].reason


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(["*/7 * * * *", "30 2 * * *", "0 0-3 * * *", "15 1 * * 0"]),
       st.sampled_from(["UTC", "America/New_York", "Europe/Berlin", "Australia/Lord_Howe"]),
       st.integers(1_700_000_000, 1_800_000_000), st.integers(1, 5 * 86400))
def test_stepping_forward_finds_exactly_the_fires_of_a_window(cron: str, zone: str, start: int, span: int) -> None:
    stepped = []
    t = float(start)
    while (t := next_fire_after(cron, zone, t)) <= start + span:
        stepped.append(t)
    assert stepped == sorted(set(stepped))  # strictly increasing: nothing fires twice
    if stepped:
        assert fires_between(cron, zone, stepped[0], start + span)[0] == stepped
