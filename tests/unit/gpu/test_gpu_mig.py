"""MIG: the profile catalog, layout validation and the NVML call sequence that applies a layout."""

from __future__ import annotations

from itertools import combinations_with_replacement

import pytest

from gpupool.domain.errors import ConflictError, ValidationError
from gpupool.domain.resources import SharingMode, mig_profile_slices
from gpupool.gpu.fake import FakeBackend
from gpupool.gpu.inventory import to_domain_gpus
from gpupool.gpu.mig import (
    CATALOG,
    MigApplyError,
    MigModel,
    MigProfile,
    apply_layout,
    catalog_for,
    parse_layout,
    validate_layout,
)
from gpupool.plan.catalog import load_catalog

A100 = "NVIDIA A100-SXM4-80GB"


@pytest.mark.parametrize(("model", "profiles"), [
    ("A100-40GB", {"1g.5gb": 7, "1g.10gb": 4, "2g.10gb": 3, "3g.20gb": 2, "4g.20gb": 1, "7g.40gb": 1}),
    ("A100-80GB", {"1g.10gb": 7, "1g.20gb": 4, "2g.20gb": 3, "3g.40gb": 2, "4g.40gb": 1, "7g.80gb": 1}),
    ("H100-80GB", {"1g.10gb": 7, "1g.20gb": 4, "2g.20gb": 3, "3g.40gb": 2, "4g.40gb": 1, "7g.80gb": 1}),
    ("H200", {"1g.18gb": 7, "1g.35gb": 4, "2g.35gb": 3, "3g.71gb": 2, "4g.71gb": 1, "7g.141gb": 1}),
    ("A30", {"1g.6gb": 4, "2g.12gb": 2, "4g.24gb": 1}),
])
def test_catalog_lists_the_documented_profiles_and_instance_counts(model: str, profiles: dict[str, int]) -> None:
    entry = CATALOG[model]
    assert {p.name: p.max_instances for p in entry.profiles} == profiles
    for p in entry.profiles:
        # the domain parser reads every catalog name, and its compute slices agree with the catalog
        assert mig_profile_slices(p.name)[0] == p.compute_slices
        # every profile fits the card alone: its max count is reachable with its own placements
        assert len(validate_layout(entry, [p.name] * p.max_instances)) == p.max_instances


@pytest.mark.parametrize(("name", "memory_mib", "key"), [
    ("NVIDIA A100-SXM4-40GB", 40960, "A100-40GB"),
    ("NVIDIA A100-PCIE-40GB", 40960, "A100-40GB"),
    ("NVIDIA A100-SXM4-80GB", 81920, "A100-80GB"),
    ("NVIDIA A100 80GB PCIe", 81920, "A100-80GB"),
    ("NVIDIA H100 80GB HBM3", 81559, "H100-80GB"),
    ("NVIDIA H100 PCIe", 81559, "H100-80GB"),
    ("NVIDIA H200", 143771, "H200"),
    ("NVIDIA A30", 24576, "A30"),
    ("A100-80GB", 0, "A100-80GB"),
])
def test_catalog_for_recognises_nvml_names(name: str, memory_mib: int, key: str) -> None:
    entry = catalog_for(name, memory_mib)
    assert entry is not None and entry.key == key


@pytest.mark.parametrize("name", ["Tesla T4", "NVIDIA L40S", "NVIDIA H100 NVL", "NVIDIA GeForce RTX 4090"])
def test_catalog_for_returns_none_without_a_known_mig_geometry(name: str) -> None:
    assert catalog_for(name, 95000) is None


@pytest.mark.parametrize(("model", "layout", "starts"), [
    # 3g at 4 (slices 4-7), 2g at 0 (0-1), the 1g at 2 and 3: compute 3+2+1+1 = 7, memory 4+2+1+1 = 8
    ("A100-80GB", "3g.40gb,2g.20gb,1g.10gb,1g.10gb", [("2g.20gb", 0), ("1g.10gb", 2), ("1g.10gb", 3), ("3g.40gb", 4)]),
    # three 2g at 0, 2, 4 and a 1g at 6: compute 2*3+1 = 7, memory 2*3+1 = 7 of 8
    ("A100-40GB", "2g.10gb,2g.10gb,2g.10gb,1g.5gb", [("2g.10gb", 0), ("2g.10gb", 2), ("2g.10gb", 4), ("1g.5gb", 6)]),
    # 4g takes memory slices 0-3, the 3g the other four: compute 4+3 = 7
    ("H100-80GB", "3g.40gb,4g.40gb", [("4g.40gb", 0), ("3g.40gb", 4)]),
    ("A30", "2g.12gb,1g.6gb,1g.6gb", [("2g.12gb", 0), ("1g.6gb", 2), ("1g.6gb", 3)]),
    ("H200", "7g.141gb", [("7g.141gb", 0)]),
])
def test_valid_layouts_get_non_overlapping_placements(model: str, layout: str, starts: list[tuple[str, int]]) -> None:
    plan = validate_layout(CATALOG[model], parse_layout(layout))
    assert [(p.profile.name, p.start) for p in plan] == starts


@pytest.mark.parametrize(("model", "layout", "message"), [
    # the example: 7 compute and 8 memory slices hold at most 3 x 2g.10gb
    ("A100-40GB", ["2g.10gb"] * 4, "holds at most 3 x 2g.10gb"),
    # 3g + 3g + 1g: compute 7 fits, but memory 4 + 4 + 1 = 9 > 8
    ("A100-40GB", ["3g.20gb", "3g.20gb", "1g.5gb"], "needs 7 compute and 9 memory slices"),
    # 4g + 4g: only one 4g exists
    ("A100-80GB", ["4g.40gb", "4g.40gb"], "holds at most 1 x 4g.40gb"),
    # 4g (slices 0-3) + 2g + 2g: compute 8 > 7
    ("H100-80GB", ["4g.40gb", "2g.20gb", "2g.20gb"], "needs 8 compute"),
    ("A100-80GB", ["3g.20gb"], "not a MIG profile of the A100-80GB"),
])
def test_invalid_layouts_are_refused_with_the_arithmetic(model: str, layout: list[str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        validate_layout(CATALOG[model], layout)


def test_slice_counts_are_not_enough_placements_must_fit_too() -> None:
    # a made-up geometry: 4 slices; 2g starts at 0 or 2, 1g only at 0 or 2. 2g + 1g + 1g adds up
    # (compute 4, memory 4) but wherever the 2g goes, one 1g finds no free start.
    model = MigModel("X", 4, 4, (MigProfile("1g.5gb", 1, 1, 2, 1, 0, (0, 2)),
                                 MigProfile("2g.10gb", 2, 2, 2, 2, 1, (0, 2))))
    with pytest.raises(ValidationError, match="placement rules"):
        validate_layout(model, ["2g.10gb", "1g.5gb", "1g.5gb"])
    assert [p.start for p in validate_layout(model, ["2g.10gb", "1g.5gb"])] == [0, 2]


def test_every_layout_within_the_slice_counts_of_an_a100_can_be_placed() -> None:
    # on the 7-compute / 8-memory geometry the documented placements never block a layout whose
    # counts fit: all multisets of up to 7 profiles are tried
    model = CATALOG["A100-80GB"]
    names = [p.name for p in model.profiles]
    fitting = 0
    for size in range(1, 8):
        for combo in combinations_with_replacement(names, size):
            try:
                validate_layout(model, combo)
                fitting += 1
            except ValidationError as error:
                assert "placement" not in str(error)
    assert fitting > 30


def test_parse_layout_reads_commas_and_none() -> None:
    assert parse_layout(" 3g.40gb, 1G.10GB ,") == ("3g.40gb", "1g.10gb")
    assert parse_layout("none") == ()
    assert parse_layout(["1g.10gb"]) == ("1g.10gb",)


def _plain_a100(**extra: object) -> FakeBackend:
    return FakeBackend({"gpus": [{"model": A100, "memory": "80GiB", **extra}]}, epoch=0.0)


def test_apply_enables_mig_and_creates_instances_in_nvml_order() -> None:
    fake = _plain_a100()
    mig = fake.mig()
    result = apply_layout(mig, 0, CATALOG["A100-80GB"], parse_layout("3g.40gb,2g.20gb,1g.10gb,1g.10gb"), busy=False)
    assert result.status == "applied"
    # profile ids: 2g.20gb = 14, 1g.10gb = 19, 3g.40gb = 9; NVML constants 1, 0, 0, 2; CI profile = GI slices
    assert mig.calls == [
        ("nvmlDeviceGetMigMode", 0),
        ("nvmlDeviceSetMigMode", 0, 1),
        ("nvmlDeviceGetMigMode", 0),
        ("nvmlDeviceGetGpuInstanceProfileInfo", 0, 1),
        ("nvmlDeviceGetGpuInstanceProfileInfo", 0, 0),
        ("nvmlDeviceGetGpuInstanceProfileInfo", 0, 0),
        ("nvmlDeviceGetGpuInstanceProfileInfo", 0, 2),
        ("nvmlDeviceGetGpuInstances", 0),
        ("nvmlDeviceCreateGpuInstanceWithPlacement", 0, 14, 0, 2),
        ("nvmlGpuInstanceGetComputeInstanceProfileInfo", 1, 1),
        ("nvmlGpuInstanceCreateComputeInstance", 1, 1),
        ("nvmlDeviceCreateGpuInstanceWithPlacement", 0, 19, 2, 1),
        ("nvmlGpuInstanceGetComputeInstanceProfileInfo", 2, 0),
        ("nvmlGpuInstanceCreateComputeInstance", 2, 0),
        ("nvmlDeviceCreateGpuInstanceWithPlacement", 0, 19, 3, 1),
        ("nvmlGpuInstanceGetComputeInstanceProfileInfo", 3, 0),
        ("nvmlGpuInstanceCreateComputeInstance", 3, 0),
        ("nvmlDeviceCreateGpuInstanceWithPlacement", 0, 9, 4, 4),
        ("nvmlGpuInstanceGetComputeInstanceProfileInfo", 4, 2),
        ("nvmlGpuInstanceCreateComputeInstance", 4, 2),
    ]
    (gpu,) = to_domain_gpus(fake.discover())
    assert gpu.mode == SharingMode.MIG
    assert [i.profile for i in gpu.mig_instances] == ["2g.20gb", "1g.10gb", "1g.10gb", "3g.40gb"]
    assert all(i.uuid.startswith("MIG-") for i in gpu.mig_instances)


def test_reapplying_destroys_compute_then_gpu_instances_first() -> None:
    fake = FakeBackend({"gpus": [{"model": A100, "memory": "80GiB", "mig": ["3g.40gb", "3g.40gb"]}]}, epoch=0.0)
    mig = fake.mig()
    result = apply_layout(mig, 0, CATALOG["A100-80GB"], ["7g.80gb"], busy=False)
    assert result.status == "applied" and result.destroyed == 2
    destroy_calls = [c for c in mig.calls if "Destroy" in c[0] or c[0] == "nvmlGpuInstanceGetComputeInstances"]
    assert destroy_calls == [
        ("nvmlGpuInstanceGetComputeInstances", 1), ("nvmlComputeInstanceDestroy", 1, 0), ("nvmlGpuInstanceDestroy", 1),
        ("nvmlGpuInstanceGetComputeInstances", 2), ("nvmlComputeInstanceDestroy", 2, 0), ("nvmlGpuInstanceDestroy", 2),
    ]
    assert [d.profile for d in fake.discover().gpus[0].mig_devices] == ["7g.80gb"]


def test_the_same_layout_again_changes_nothing() -> None:
    fake = FakeBackend({"gpus": [{"model": A100, "memory": "80GiB", "mig": ["3g.40gb", "1g.10gb"]}]}, epoch=0.0)
    before = [d.uuid for d in fake.discover().gpus[0].mig_devices]
    mig = fake.mig()
    result = apply_layout(mig, 0, CATALOG["A100-80GB"], ["1g.10gb", "3g.40gb"], busy=False)
    assert result.status == "unchanged"
    assert not any("Create" in c[0] or "Destroy" in c[0] for c in mig.calls)
    assert [d.uuid for d in fake.discover().gpus[0].mig_devices] == before


def test_a_busy_gpu_is_never_repartitioned() -> None:
    fake = FakeBackend({"gpus": [{"model": A100, "memory": "80GiB", "mig": ["7g.80gb"]}]}, epoch=0.0)
    mig = fake.mig()
    with pytest.raises(ConflictError, match="running work"):
        apply_layout(mig, 0, CATALOG["A100-80GB"], ["1g.10gb"], busy=True)
    assert mig.calls == []


def test_an_invalid_layout_is_refused_before_touching_the_gpu() -> None:
    fake = _plain_a100()
    mig = fake.mig()
    with pytest.raises(ValidationError):
        apply_layout(mig, 0, CATALOG["A100-80GB"], ["4g.40gb", "4g.40gb"], busy=False)
    assert mig.calls == []


def test_a_mode_change_that_needs_a_reset_is_reported_not_forced() -> None:
    fake = _plain_a100(mig_needs_reset=True)
    result = apply_layout(fake.mig(), 0, CATALOG["A100-80GB"], ["7g.80gb"], busy=False)
    assert result.status == "pending_reset"
    assert "nvidia-smi -r -i 0" in result.message
    info = fake.discover().gpus[0]
    assert (info.mig_enabled, info.mig_pending) == (False, True)


def test_an_empty_layout_disables_mig() -> None:
    fake = FakeBackend({"gpus": [{"model": A100, "memory": "80GiB", "mig": ["3g.40gb", "3g.40gb"]}]}, epoch=0.0)
    result = apply_layout(fake.mig(), 0, CATALOG["A100-80GB"], parse_layout("none"), busy=False)
    assert (result.status, result.destroyed) == ("disabled", 2)
    (gpu,) = to_domain_gpus(fake.discover())
    assert gpu.mode == SharingMode.EXCLUSIVE and gpu.mig_instances == ()


def test_an_nvml_refusal_names_the_step() -> None:
    fake = _plain_a100()
    fake.state.cards[0].mig_model = None  # the card turns out not to support MIG at all
    with pytest.raises(MigApplyError, match="NVML could not read the MIG mode: Not Supported"):
        apply_layout(fake.mig(), 0, CATALOG["A100-80GB"], ["7g.80gb"], busy=False)


@pytest.mark.parametrize(("planner_name", "key"), [
    ("A100-80GB", "A100-80GB"), ("A100-40GB", "A100-40GB"), ("H100-SXM", "H100-80GB"), ("H100-PCIe", "H100-80GB"),
    ("H200", "H200"),
])
def test_the_planner_catalog_agrees_with_this_one(planner_name: str, key: str) -> None:
    # the capacity planner keeps its own MIG table (sizes for `gpupool plan mig`); both come from the MIG
    # user guide and must not drift apart
    geometry = load_catalog().gpu(planner_name).mig
    assert geometry is not None
    ours = CATALOG[key]
    assert (geometry.compute_slices, geometry.memory_slices) == (ours.compute_slices, ours.memory_slices)
    assert {(p.name, p.compute_slices, p.memory_slices, p.instances) for p in geometry.profiles} == {
        (p.name, p.compute_slices, p.memory_slices, p.max_instances) for p in ours.profiles}
