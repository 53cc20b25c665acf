"""The one size and duration grammar, read the same way by specs (domain.resources) and the planner."""

from __future__ import annotations

import pytest

from gpupool.domain import resources
from gpupool.domain.units import bytes_per, duration_seconds, split_quantity
from gpupool.plan import units as plan_units


def test_quantities_and_units() -> None:
    assert split_quantity(" 1.5 TB ") == (1.5, "TB")
    assert split_quantity("lots") is None
    assert bytes_per("GiB") == 2**30 and bytes_per("gb") == 1e9 and bytes_per("XB") is None


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("1h30m", 5400), ("1h 30m", 5400),
                                               ("2w", 1_209_600), ("1.5d", 129_600), ("10min", 600)])
def test_durations(text: str, seconds: float) -> None:
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["6hours", "30mh", "h", "1h30", ""])
def test_not_durations(text: str) -> None:
    assert duration_seconds(text) is None


@pytest.mark.parametrize("text", ["6h", "1h30m", "2d", "3w"])
def test_specs_and_planner_agree_on_durations(text: str) -> None:
    assert resources.parse_duration(text) == plan_units.parse_duration(text)


@pytest.mark.parametrize(("text", "mib"), [("16GiB", 16384), ("1TB", 953675), ("512MiB", 512)])
def test_specs_and_planner_agree_on_sizes(text: str, mib: int) -> None:
    # specs round up to whole MiB: 1e12 / 2^20 = 953674.3 -> 953675
    assert resources.parse_memory(text) == mib
    assert plan_units.parse_bytes(text) / 2**20 == pytest.approx(mib, abs=1)
