"""What real drivers do that the first version of the NVML code missed, scripted on the fake NVML: MPS
process lists, drivers without the _v3 process calls or memory info v2, a failing nvmlInit that recovers,
MIG parents read without privileges, SM counts of whole cards."""

from __future__ import annotations

from typing import Any

import pynvml
import pytest

from gpupool.gpu.fake import FakeBackend, load_description
from gpupool.gpu.fake_nvml import HOST_PID_OFFSET, FakeNvml
from gpupool.gpu.nvml import INIT_RETRY_FIRST_S, INIT_RETRY_MAX_S, NvmlBackend
from gpupool.gpu.types import MIB

A100 = "NVIDIA A100-SXM4-80GB"
GIB = 1024 * MIB


def _node(**top: Any) -> dict[str, Any]:
    return {"node": "d", **top, "gpus": [{"model": A100, "memory": "80GiB", "reserved": "512MiB"}],
            "processes": [{"pid": 500, "gpu": 0, "memory": "300MiB"},                       # the MPS server
                          {"pid": 601, "gpu": 0, "memory": "4GiB", "mps_client": True},     # two MPS clients
                          {"pid": 602, "gpu": 0, "memory": "2GiB", "mps_client": True},
                          {"pid": 700, "gpu": 0, "memory": "1GiB", "host_pid": 90700}]}


@pytest.mark.parametrize("old_driver", [False, True])
def test_both_process_lists_are_read_on_new_and_old_drivers(old_driver: bool) -> None:
    backend = FakeBackend(_node(old_driver=old_driver), epoch=0.0)
    sample = backend.sample(1.0)
    # the compute list holds the MPS server and the plain process, the MPS list the clients; an old driver
    # (no _v3 calls: pynvml's unversioned names raise NVMLLibraryMismatchError) is read through the _v2 calls
    assert [(p.pid, p.memory_bytes, p.kind) for p in sample.processes] == [
        (500, 300 * MIB, "compute"), (601, 4 * GIB, "mps_client"), (602, 2 * GIB, "mps_client"),
        (700, 1 * GIB, "compute")]


def test_the_unversioned_call_of_an_old_driver_raises_what_pynvml_raises() -> None:
    nvml = FakeNvml(load_description(_node(old_driver=True)))
    with pytest.raises(pynvml.NVMLLibraryMismatchError):
        nvml.nvmlDeviceGetComputeRunningProcesses(nvml.nvmlDeviceGetHandleByIndex(0))
    assert not issubclass(pynvml.NVMLLibraryMismatchError, pynvml.NVMLError)  # why it needs catching apart


@pytest.mark.parametrize(("old_driver", "used_mib"), [
    (False, 300 + 4096 + 2048 + 1024),        # memory info v2: the processes' memory
    (True, 300 + 4096 + 2048 + 1024 + 512),   # v1 only: the driver's 512 MiB reserve counts as used
])
def test_used_memory_leaves_out_the_driver_reserve_where_v2_exists(old_driver: bool, used_mib: int) -> None:
    sample = FakeBackend(_node(old_driver=old_driver), epoch=0.0).sample(1.0)
    assert sample.gpus[0].memory_used_bytes == used_mib * MIB


def test_host_pids_are_reported_when_the_driver_does_not_translate() -> None:
    sample = FakeBackend(_node(host_pids=True), epoch=0.0).sample(1.0)
    assert [p.pid for p in sample.processes] == sorted([500 + HOST_PID_OFFSET, 601 + HOST_PID_OFFSET,
                                                        602 + HOST_PID_OFFSET, 90700])


class FlakyInit(FakeNvml):
    """nvmlInit fails `failures` times (the driver is still loading), then works."""

    def __init__(self, failures: int) -> None:
        super().__init__(load_description({"gpus": [{"model": A100, "memory": "80GiB"}]}))
        self.failures, self.attempts = failures, 0

    def nvmlInit(self) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
        super().nvmlInit()


def test_a_failed_init_is_retried_with_a_doubling_backoff() -> None:
    nvml, now = FlakyInit(failures=3), [0.0]
    backend = NvmlBackend(lambda: nvml, clock=lambda: now[0])
    assert backend.discover().unavailable == "NVML unavailable: the NVIDIA kernel driver is not loaded"
    assert backend.discover().unavailable and nvml.attempts == 1    # not before the first retry time
    now[0] = INIT_RETRY_FIRST_S
    assert backend.sample(now[0]).gpus == () and nvml.attempts == 2   # retried, failed: next in 2 x 10 s
    now[0] += 2 * INIT_RETRY_FIRST_S - 1
    backend.discover()
    assert nvml.attempts == 2
    now[0] += 1
    backend.discover()
    assert nvml.attempts == 3                                         # then 40 s later
    now[0] += 4 * INIT_RETRY_FIRST_S
    inventory = backend.discover()
    assert nvml.attempts == 4 and inventory.unavailable is None and len(inventory.gpus) == 1
    assert INIT_RETRY_MAX_S >= 4 * INIT_RETRY_FIRST_S


def test_a_missing_library_is_not_retried() -> None:
    calls = []

    def load() -> Any:
        calls.append(1)
        raise ImportError("No module named 'pynvml'")

    now = [0.0]
    backend = NvmlBackend(load, clock=lambda: now[0])
    backend.discover()
    now[0] = 10 * INIT_RETRY_MAX_S
    assert backend.discover().unavailable is not None and len(calls) == 1


def test_a_mig_parent_read_without_privileges_stays_a_healthy_card() -> None:
    description = {"privileged": False, "gpus": [{"model": A100, "memory": "80GiB", "mig": ["3g.40gb", "4g.40gb"]}]}
    backend = FakeBackend(description, epoch=0.0)
    card = backend.discover().gpus[0]
    # the aggregate memory of a card in MIG mode needs privileges: the nominal 7g.80gb size is used instead
    assert (card.error, card.memory_mib, card.mig_enabled) == (None, 80 * 1024, True)
    assert sorted(d.profile for d in card.mig_devices) == ["3g.40gb", "4g.40gb"]
    assert backend.sample(1.0).gpus[0].memory_used_bytes is None  # not readable: unknown, not an error


def test_without_privileges_a_card_outside_mig_is_still_read_normally() -> None:
    card = FakeBackend({"privileged": False, "gpus": [{"model": A100, "memory": "80GiB"}]}).discover().gpus[0]
    assert (card.error, card.memory_mib, card.sm_count) == (None, 81920, 108)  # SMs: the catalog's A100
