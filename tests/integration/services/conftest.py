"""Shared by the service tests: the tiny GPT-2, built once per session (a few seconds, mostly imports)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support import tiny_llm


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model directory (see examples/tiny_llm_server/build_model.py)."""
    return tiny_llm.build_model(tmp_path_factory.mktemp("tiny-model"))
