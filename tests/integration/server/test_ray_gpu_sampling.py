"""The GPUs of a Ray node are sampled on the node, by its agent, and the server's GPU sampler collects the
figures through the agent into /metrics (a server over a fake Ray, tests/support/fake_ray.py, its workers off
and its sampler stepped by the test). The real cluster test (tests/integration/cluster) runs the same path
through Ray."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import httpx
import pytest
from tests.support.fake_ray import TIMEOUT, FakeRay
from tests.support.servers import server_settings, start_server

from gpupool.executors.ray import RayExecutor

NODE_A, NODE_B = "aa" * 28, "bb" * 28  # Ray node ids: 28 bytes in hex
SAMPLE_BOUND_S = 5.0  # a sampler step over a silent agent must not wait for an agent call (30 s)


def _utilisation(url: str, token: str, node: str) -> list[float]:
    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {token}"}).text
    pattern = rf'^gpupool_gpu_utilization\{{[^}}]*node="{node}"[^}}]*\}} (\S+)$'
    return [float(v) for v in re.findall(pattern, text, flags=re.MULTILINE)]


def test_a_ray_nodes_gpu_figures_are_the_agents_and_a_silent_agent_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeRay()
    fake.add_node(NODE_A, "node-a")
    fake.add_node(NODE_B, "node-b", gpus="2xA100-80GB")
    settings = server_settings(tmp_path / "home", f"sqlite:///{tmp_path / 'gpupool.db'}", workers=False)
    executor = RayExecutor("fake", api=fake)
    server = start_server(settings, executor)
    try:
        agent = fake.agent_on(NODE_B)
        agent.utilization_pct = 37.0  # what the node's own GPUs report: only the agent knows it
        server.services.sampler.step()
        assert agent.calls.count("_sample_gpus") == 1
        # a node pass's bound, not a whole call's: the sampler visits the nodes one after the other
        assert [t for m, t in fake.waits if m == "_sample_gpus"] == [executor.survey_timeout_s]
        assert _utilisation(server.url, server.admin_token, "node-b") == [0.37, 0.37]
        assert _utilisation(server.url, server.admin_token, "node-a") == []  # no GPUs, nothing asked
        assert "_sample_gpus" not in fake.agent_on(NODE_A).calls
        agent.utilization_pct = 3.0
        server.services.sampler.step()
        assert _utilisation(server.url, server.admin_token, "node-b") == [0.03, 0.03]
        agent.mode = TIMEOUT  # the agent stops answering: the node is skipped, quietly, without waiting
        server.services.node_sync.step()
        caplog.clear()
        began = time.monotonic()
        for _ in range(3):
            server.services.sampler.step()
        assert time.monotonic() - began < SAMPLE_BOUND_S
        assert agent.calls.count("_sample_gpus") == 2  # no call to a silent agent
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
        assert _utilisation(server.url, server.admin_token, "node-b") == [0.03, 0.03]  # the last figures
    finally:
        server.stop()
