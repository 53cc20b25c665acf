"""The NVML backend: the real "no NVML" path on this machine, the discovery and sampling code through the
scripted fake NVML, and (marked `gpu`) the real path wherever NVML finds a device."""

from __future__ import annotations

import logging
from typing import Any

import pynvml
import pytest

from gpupool.domain.resources import SharingMode
from gpupool.gpu.fake import FakeBackend, load_description
from gpupool.gpu.fake_nvml import FakeNvml
from gpupool.gpu.inventory import to_domain_gpus
from gpupool.gpu.nvml import NvmlBackend

A100 = "NVIDIA A100-SXM4-80GB"


def _has_nvml_device() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    try:
        return bool(pynvml.nvmlDeviceGetCount() > 0)
    finally:
        pynvml.nvmlShutdown()


def test_without_nvml_the_node_has_no_gpus_and_says_why_once(caplog: pytest.LogCaptureFixture) -> None:
    if _has_nvml_device():
        pytest.skip("this machine has an NVIDIA driver: the no-NVML path cannot be exercised for real")
    backend = NvmlBackend()  # the real pynvml, on a machine without libnvidia-ml.so.1
    with caplog.at_level(logging.INFO, logger="gpupool.gpu.nvml"):
        inventory = backend.discover()
        again = backend.discover()
        sample = backend.sample(12.5)
    backend.close()
    backend.close()
    assert inventory.gpus == () and again.gpus == ()
    assert inventory.unavailable is not None and "NVML" in inventory.unavailable
    assert (sample.time, sample.gpus, sample.processes, sample.errors) == (12.5, (), (), ())
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage().startswith("no GPUs on this node: NVML unavailable")
    assert to_domain_gpus(inventory) == ()


def test_without_the_nvidia_ml_py_package_the_node_has_no_gpus() -> None:
    def missing() -> Any:
        raise ImportError("No module named 'pynvml'")

    inventory = NvmlBackend(missing).discover()
    assert inventory.gpus == ()
    assert inventory.unavailable == "nvidia-ml-py is not installed (No module named 'pynvml')"


@pytest.mark.parametrize(("error", "reason"), [
    (pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED), "the NVIDIA kernel driver is not loaded"),
    (pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION), "no permission to open the NVIDIA devices"),
    (OSError("broken installation"), "broken installation"),
])
def test_an_init_failure_is_explained_not_raised(error: Exception, reason: str) -> None:
    class FailingInit(FakeNvml):
        def nvmlInit(self) -> None:
            raise error

    backend = NvmlBackend(lambda: FailingInit(load_description({"gpus": []})))
    inventory = backend.discover()
    assert inventory.gpus == () and inventory.unavailable == f"NVML unavailable: {reason}"
    assert backend.sample(1.0).gpus == ()


def test_discovery_reads_every_field(backend: FakeBackend, description: dict[str, Any]) -> None:
    inventory = backend.discover()
    assert (inventory.driver_version, inventory.cuda_version, inventory.unavailable) == ("550.54.15", "12.4", None)
    first, second, lone, partitioned = inventory.gpus
    assert first.uuid.startswith("GPU-") and first.uuid != second.uuid
    assert (first.name, first.memory_mib, first.sm_count, first.compute_capability) == (A100, 81920, 108, (8, 0))
    assert first.pci_bus_id == "00000000:10:00.0"
    assert (first.nvlink_peers, second.nvlink_peers, lone.nvlink_peers) == ((1,), (0,), ())
    assert first.nvlink_active_links == 12 and lone.nvlink_active_links == 0
    assert (partitioned.mig_enabled, partitioned.mig_pending) == (True, True)
    assert [(d.profile, d.gpu_instance_id, d.memory_mib) for d in partitioned.mig_devices] == [
        ("2g.20gb", 1, 20480), ("1g.10gb", 2, 10240), ("1g.10gb", 3, 10240), ("3g.40gb", 4, 40960)]
    # the same description gives the same UUIDs (they identify cards across restarts)
    assert FakeBackend(description).discover().gpus[0].uuid == first.uuid


def test_sampling_follows_the_scripted_traces(backend: FakeBackend) -> None:
    backend.add_process(4242, 0, "2GiB")
    early, late = backend.sample(10.0), backend.sample(40.0)
    assert [r.utilization_pct for r in early.gpus] == [0.0, 0.0, 0.0, None]  # NVML has no utilisation in MIG mode
    assert [r.utilization_pct for r in late.gpus][:2] == [90.0, 90.0]
    assert late.gpus[0].power_w == 310.0 and late.gpus[2].temperature_c == 41.0
    assert early.gpus[0].memory_used_bytes == 2 * 1024**3 and early.gpus[0].memory_total_bytes == 80 * 1024**3
    assert [(p.gpu_index, p.pid, p.memory_bytes) for p in late.processes] == [(0, 4242, 2 * 1024**3)]


def test_processes_inside_mig_devices_are_tagged_with_the_device(backend: FakeBackend) -> None:
    backend.add_process(77, 3, "3GiB", mig=3)
    inventory = backend.discover()
    (proc,) = backend.sample(1.0).processes
    assert (proc.gpu_index, proc.pid, proc.mig_uuid) == (3, 77, inventory.gpus[3].mig_devices[3].uuid)


def test_a_gpu_that_stops_answering_is_reported_unhealthy() -> None:
    backend = FakeBackend({"gpus": [{"model": A100, "memory": "80GiB"}, {"model": A100, "memory": "80GiB",
                                                                          "lost": True}]})
    inventory = backend.discover()
    assert inventory.gpus[1].error == "GPU is lost"
    healthy = [g.healthy for g in to_domain_gpus(inventory)]
    assert healthy == [True, False]
    sample = backend.sample(0.0)
    assert sample.gpus[1].utilization_pct is None and sample.gpus[0].utilization_pct == 0.0


def test_old_pynvml_bytes_and_cuda_versions_are_decoded() -> None:
    class OldPynvml(FakeNvml):
        def nvmlDeviceGetName(self, handle: Any) -> Any:
            return super().nvmlDeviceGetName(handle).encode()

        def nvmlSystemGetDriverVersion(self) -> Any:
            return b"470.82.01"

    state = load_description({"cuda_version": 11080, "gpus": [{"model": "Tesla T4", "memory": "15GiB"}]})
    inventory = NvmlBackend(lambda: OldPynvml(state)).discover()
    assert (inventory.gpus[0].name, inventory.driver_version, inventory.cuda_version) == ("Tesla T4", "470.82.01",
                                                                                          "11.8")
    assert inventory.gpus[0].sm_count == 40  # NVML gives no SM count for a whole card: the catalog's T4 entry


def test_close_shuts_nvml_down_once(backend: FakeBackend) -> None:
    backend.discover()
    assert backend.nvml.initialised == 1
    backend.close()
    backend.close()
    assert backend.nvml.initialised == 0 and backend.nvml.registered == {}


@pytest.mark.gpu
def test_real_nvml_discovers_and_samples_this_machines_gpus() -> None:
    backend = NvmlBackend()
    try:
        inventory = backend.discover()
        if not inventory.gpus:
            pytest.skip(f"NVML found no device here ({inventory.unavailable or 'no GPU'})")
        for info in inventory.gpus:
            assert info.error is None and info.uuid.startswith("GPU-") and info.memory_mib > 0
            assert info.compute_capability is not None and info.pci_bus_id
        assert inventory.driver_version and inventory.cuda_version
        sample = backend.sample(0.0)
        assert len(sample.gpus) == len(inventory.gpus)
        for reading in sample.gpus:
            assert reading.memory_total_bytes and reading.memory_total_bytes > 0
            assert reading.utilization_pct is None or 0 <= reading.utilization_pct <= 100
        gpus = to_domain_gpus(inventory)
        assert all(g.mode in (SharingMode.EXCLUSIVE, SharingMode.MIG) for g in gpus)
    finally:
        backend.close()


def test_rediscovery_registers_events_once_and_an_empty_node_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    class Counting(FakeNvml):
        registrations = 0

        def nvmlDeviceRegisterEvents(self, handle: Any, types: int, event_set: object) -> None:
            Counting.registrations += 1
            super().nvmlDeviceRegisterEvents(handle, types, event_set)

    two = NvmlBackend(lambda: Counting(load_description({"gpus": [{"model": A100, "memory": "80GiB",
                                                                     "count": 2}]})))
    two.discover()
    two.discover()
    two.sample(0.0)
    assert Counting.registrations == 2

    empty = NvmlBackend(lambda: FakeNvml(load_description({"gpus": []})))
    with caplog.at_level(logging.INFO, logger="gpupool.gpu.nvml"):
        assert empty.discover().gpus == () and empty.discover().unavailable is None
        assert empty.sample(1.0).gpus == () and empty.sample(2.0).gpus == ()
    assert [r.getMessage() for r in caplog.records] == ["NVML works but found no GPU on this node"]
