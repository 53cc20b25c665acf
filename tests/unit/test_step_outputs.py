"""`gpupool.outputs(...)`: a pipeline step's outputs merge into $GPUPOOL_OUTPUTS; clear errors elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import gpupool


def test_outputs_merge_into_the_steps_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "steps" / "evaluate" / "outputs.json"
    monkeypatch.setenv("GPUPOOL_OUTPUTS", str(target))
    gpupool.outputs(accuracy=0.91)
    assert gpupool.outputs(accuracy=0.93, model="m.pt") == {"accuracy": 0.93, "model": "m.pt"}
    assert json.loads(target.read_text()) == {"accuracy": 0.93, "model": "m.pt"}
    assert [p.name for p in target.parent.iterdir()] == ["outputs.json"]  # no temporary file left
    with pytest.raises(TypeError, match="must be a string, number or boolean"):
        gpupool.outputs(bad=[1, 2])  # type: ignore[arg-type]


def test_outside_a_step_it_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPUPOOL_OUTPUTS", raising=False)
    with pytest.raises(RuntimeError, match="GPUPOOL_OUTPUTS is not set"):
        gpupool.outputs(x=1)
