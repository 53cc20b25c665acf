"""MIG edge cases real hardware produces: a layout left half-applied, MIG mode changes that stay pending (and
why), and the H200 profile table."""

from __future__ import annotations

import pynvml
import pytest

from gpupool.gpu.fake import FakeBackend
from gpupool.gpu.mig import CATALOG, MigApplyError, apply_layout
from gpupool.gpu.nvml_mig import PynvmlMig

A100 = "NVIDIA A100-SXM4-80GB"
LAYOUT = ["3g.40gb", "2g.20gb", "1g.10gb"]


def _profiles(fake: FakeBackend) -> list[str]:
    return sorted(d.profile for d in fake.discover().gpus[0].mig_devices)


def test_a_gpu_instance_without_its_compute_instance_is_rebuilt_not_called_unchanged() -> None:
    # what a crash between nvmlDeviceCreateGpuInstanceWithPlacement and nvmlGpuInstanceCreateComputeInstance
    # leaves: the GPU instances match the layout, one has no compute instance, so it is no MIG device
    fake = FakeBackend({"gpus": [{"model": A100, "memory": "80GiB", "mig": [
        "3g.40gb", "2g.20gb", {"profile": "1g.10gb", "compute_instance": False}]}]}, epoch=0.0)
    assert _profiles(fake) == ["2g.20gb", "3g.40gb"]
    result = apply_layout(fake.mig(), 0, CATALOG["A100-80GB"], LAYOUT, busy=False)
    assert (result.status, result.destroyed) == ("applied", 3)
    assert _profiles(fake) == ["1g.10gb", "2g.20gb", "3g.40gb"]


def test_instances_at_other_placements_are_not_the_same_layout() -> None:
    # same profile ids, other start positions (e.g. made by hand with nvidia-smi): rebuilt where planned
    fake = FakeBackend({"gpus": [{"model": A100, "memory": "80GiB", "mig": ["1g.10gb"]}]}, epoch=0.0)
    card = fake.state.cards[0]
    card.instances[0].start = 6  # planned at 0
    result = apply_layout(fake.mig(), 0, CATALOG["A100-80GB"], ["1g.10gb"], busy=False)
    assert result.status == "applied" and card.instances[0].start == 0


def test_after_a_step_fails_half_way_applying_again_completes_the_layout() -> None:
    fake = FakeBackend({"gpus": [{"model": A100, "memory": "80GiB"}]}, epoch=0.0)
    mig = fake.mig()
    mig.fail_next["nvmlGpuInstanceCreateComputeInstance"] = pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES
    with pytest.raises(MigApplyError, match=r"could not create the compute instance of 3g\.40gb"):
        apply_layout(mig, 0, CATALOG["A100-80GB"], LAYOUT, busy=False)
    assert _profiles(fake) == []  # the first GPU instance exists, without its compute instance
    assert [gi.compute for gi in fake.state.cards[0].instances] == [[]]
    retry = apply_layout(fake.mig(), 0, CATALOG["A100-80GB"], LAYOUT, busy=False)
    assert (retry.status, retry.destroyed) == ("applied", 1)
    assert _profiles(fake) == ["1g.10gb", "2g.20gb", "3g.40gb"]


@pytest.mark.parametrize(("activation", "cause", "advice"), [
    ("in_use", "in_use", "processes are using the GPU"),
    ("reset_required", "reset_required", "nvidia-smi -r -i 0"),
    ("no_permission", "no_permission", "needs root"),
])
def test_a_pending_mig_mode_says_why(activation: str, cause: str, advice: str) -> None:
    fake = FakeBackend({"gpus": [{"model": A100, "memory": "80GiB", "mig_activation": activation}]}, epoch=0.0)
    result = apply_layout(fake.mig(), 0, CATALOG["A100-80GB"], ["7g.80gb"], busy=False)
    assert (result.status, result.cause) == ("pending_reset", cause)
    assert advice in result.message
    info = fake.discover().gpus[0]
    assert (info.mig_enabled, info.mig_pending) == (False, True)  # nothing was created on a card not in MIG


def test_the_activation_status_of_pynvml_is_passed_on() -> None:
    class Nvml:
        NVML_DEVICE_MIG_ENABLE, NVML_DEVICE_MIG_DISABLE = 1, 0

        def nvmlInit(self) -> None: ...

        def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
            return f"gpu{index}"

        def nvmlDeviceSetMigMode(self, device: str, mode: int) -> int:
            return pynvml.NVML_ERROR_IN_USE  # what pynvml returns: c_activationStatus.value

    assert PynvmlMig(Nvml).set_mig_mode(0, True) == pynvml.NVML_ERROR_IN_USE


def test_h200_profiles_match_nvidias_mig_configurations() -> None:
    # NVIDIA/mig-parted deployments/systemd/config-default.yaml, "H200-141GB" entries: all-1g.18gb (7),
    # all-1g.35gb (4), all-2g.35gb (3), all-3g.71gb (2), all-4g.71gb (1), all-7g.141gb (1)
    h200 = CATALOG["H200"]
    assert [(p.name, p.max_instances, p.compute_slices, p.memory_slices) for p in h200.profiles] == [
        ("1g.18gb", 7, 1, 1), ("1g.35gb", 4, 1, 2), ("2g.35gb", 3, 2, 2), ("3g.71gb", 2, 3, 4), ("4g.71gb", 1, 4, 4),
        ("7g.141gb", 1, 7, 8)]
