"""A node whose NVML failed at start-up (driver still loading) gets its GPUs once NVML works: the backend
retries nvmlInit with a backoff, the sampler sees GPUs and stores the node's cards, the scheduler uses them."""

from __future__ import annotations

import pynvml
from tests.integration.server.conftest import ServerFactory
from tests.support.servers import wait_until

from gpupool.executors.fake import FakeExecutor
from gpupool.gpu.fake import load_description
from gpupool.gpu.fake_nvml import FakeNvml
from gpupool.gpu.nvml import INIT_RETRY_FIRST_S, NvmlBackend

JOB = "name: train\ncommand: sleep 60\nresources: {cpu: 0.5, memory: 256MiB, gpu: 1}\n"


class LateDriver(FakeNvml):
    """nvmlInit fails until `loaded` is set."""

    loaded = False

    def nvmlInit(self) -> None:
        if not self.loaded:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
        super().nvmlInit()


def test_gpus_found_after_a_late_driver_are_stored_and_scheduled(server_factory: ServerFactory,
                                                                 fake: FakeExecutor) -> None:
    nvml = LateDriver(load_description({"gpus": [{"model": "NVIDIA A100-SXM4-80GB", "memory": "80GiB"}]}))
    clock = [0.0]
    server = server_factory(fake, sample_interval_s=0.05,
                            nvml_backend=lambda: NvmlBackend(lambda: nvml, clock=lambda: clock[0]))
    with server.client() as admin:
        (node,) = admin.nodes()
        assert node.gpus == [] and node.gpu_unavailable == "NVML unavailable: the NVIDIA kernel driver is not loaded"
        nvml.loaded = True
        clock[0] = INIT_RETRY_FIRST_S  # the backend's next nvmlInit attempt is due
        wait_until(lambda: len(admin.nodes()[0].gpus) == 1, timeout_s=20, what="the GPU stored")
        assert admin.nodes()[0].gpu_unavailable is None
        wid = admin.submit(JOB).workload.id  # refused before: no node had a GPU
        assert admin.wait(wid, ["running"], timeout_s=20).status == "running"
