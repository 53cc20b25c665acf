"""MIG sizing: slices from SMs and memory, the smallest profile, instances per GPU, errors."""

from __future__ import annotations

import pytest

from gpupool.plan.catalog import Catalog, load_catalog
from gpupool.plan.errors import PlanInputError
from gpupool.plan.mig import MigRequest, plan_mig
from gpupool.plan.units import GIB


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


@pytest.mark.parametrize(
    ("gpu", "request_", "profile", "instances"),
    [
        # H100: ceil(30 / 16) = 2 compute slices; 15 GiB -> 1g.20gb's 2 memory slices; min(3, 4) = 3.
        ("H100", MigRequest(sms=30, memory_bytes=15 * GIB), "2g.20gb", 3),
        # A100-80GB, 3 slices, no memory asked: min(floor(7/3), floor(8/1)) = 2.
        ("A100-80GB", MigRequest(slices=3), "3g.40gb", 2),
        # H20: 1 slice, 12 GiB = one 12 GiB memory slice: min(7, 8) = 7.
        ("H20", MigRequest(slices=1, memory_bytes=12 * GIB), "1g.12gb", 7),
        # H200: 18 GiB is the 1g.18gb profile's name, one memory slice of 141/8 = 17.6 GiB: 7.
        ("H200", MigRequest(slices=1, memory_bytes=18 * GIB), "1g.18gb", 7),
        # A100-40GB, 1 slice with 10 GiB: 1g.10gb takes 2 memory slices: min(7, 4) = 4.
        ("A100-40GB", MigRequest(sms=14, memory_bytes=10 * GIB), "1g.10gb", 4),
        # More SMs than the SM request alone would need: --slices wins when larger.
        ("A100-40GB", MigRequest(sms=14, slices=4), "4g.20gb", 1),
    ],
)
def test_profiles_and_instances(
    catalog: Catalog, gpu: str, request_: MigRequest, profile: str, instances: int
) -> None:
    report = plan_mig(catalog.gpu(gpu), request_)
    assert (report.summary["profile"], report.summary["instances"]) == (profile, instances)
    chosen = [row for row in report.tables[0].rows if row[-1]]
    assert [row[0] for row in chosen] == [profile]


def test_a_request_larger_than_any_profile_is_an_answer(catalog: Catalog) -> None:
    report = plan_mig(catalog.gpu("A100-40GB"), MigRequest(memory_bytes=48 * GIB))
    assert report.summary["fits"] is False
    assert report.notes[0] == "No profile holds 48.00 GiB: the largest has 40 GiB."


@pytest.mark.parametrize(
    ("gpu", "request_", "message"),
    [
        ("L4", MigRequest(slices=1), "L4 does not support MIG"),
        ("A100-40GB", MigRequest(), "give the instance size"),
        ("A100-40GB", MigRequest(slices=8), "--slices must be between 1 and 7"),
        ("A100-40GB", MigRequest(sms=0), "--sm must be at least 1"),
        ("H20", MigRequest(sms=20), "SMs per MIG slice of H20 are not in the catalog; give --slices"),
    ],
)
def test_bad_requests_are_named(catalog: Catalog, gpu: str, request_: MigRequest, message: str) -> None:
    with pytest.raises(PlanInputError, match=message):
        plan_mig(catalog.gpu(gpu), request_)
