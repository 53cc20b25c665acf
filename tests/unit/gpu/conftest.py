"""Shared fixtures for the GPU layer tests: scripted fake nodes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from gpupool.gpu.fake import FakeBackend

A100 = "NVIDIA A100-SXM4-80GB"


def two_board_node() -> dict[str, Any]:
    """Two NVLinked A100-80GB, one lone A100-80GB, one MIG-partitioned A100-80GB."""
    return {
        "node": "n1",
        "gpus": [
            {"model": A100, "memory": "80GiB", "count": 2, "nvlink": "board0", "sm_count": 108,
             "utilization": [[0, 0], ["30s", 90]], "power": [[0, 60], ["30s", 310]]},
            {"model": A100, "memory": "80GiB", "sm_count": 108, "temperature": 41},
            {"model": A100, "memory": "80GiB", "sm_count": 108, "mig": ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]},
        ],
    }


@pytest.fixture
def description() -> dict[str, Any]:
    """The description of the `backend` fixture's node (a fresh copy per test)."""
    return two_board_node()


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    fake = FakeBackend(two_board_node(), epoch=0.0)
    yield fake
    fake.close()
