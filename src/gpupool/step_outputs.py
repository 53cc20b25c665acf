"""`gpupool.outputs(accuracy=0.93)` (this module's `outputs`): record outputs of a pipeline step, for later
steps' `{{steps.S.outputs.Y}}`.

Stdlib only, so a step's script can call it without loading anything else. Values are strings, numbers or
booleans; each call merges into the step's outputs.json ($GPUPOOL_OUTPUTS), written atomically (a new file
renamed over the old one), so a step killed mid-write leaves the previous outputs intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def outputs(**values: str | int | float | bool) -> dict[str, str | int | float | bool]:
    """Merge `values` into this step's outputs and return them all. RuntimeError outside a pipeline step
    (no GPUPOOL_OUTPUTS); TypeError for a value that is not a string, number or boolean."""
    target = os.environ.get("GPUPOOL_OUTPUTS")
    if not target:
        raise RuntimeError("gpupool.outputs() records outputs of a pipeline step; GPUPOOL_OUTPUTS is not set here")
    for key, value in values.items():
        if not isinstance(value, str | int | float | bool):
            raise TypeError(f"output {key} must be a string, number or boolean, not {type(value).__name__}")
    path = Path(target)
    current: dict[str, str | int | float | bool] = {}
    if path.exists():
        current = json.loads(path.read_text() or "{}")
    current.update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".outputs-")
    with os.fdopen(fd, "w") as handle:
        json.dump(current, handle)
    os.replace(tmp, path)
    return current
