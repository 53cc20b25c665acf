"""The local mode never imports Ray: only cluster mode (`gpupool up --ray`) does."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
from pathlib import Path
import tempfile
from gpupool.cli import main
from gpupool.server import app, executors
from gpupool.server.settings import Settings
executor = executors.make_executor(Settings(home=Path(tempfile.mkdtemp())))
print(executor.name, 'ray' in sys.modules)
"""


def test_the_server_and_cli_of_the_local_mode_do_not_import_ray() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["local", "False"]


def test_cluster_mode_modules_are_the_ones_importing_ray() -> None:
    probe = "import sys; import gpupool.executors.ray_agent, gpupool.executors.ray_fence; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"  # the agent and the watchdog are plain Python; executors/ray.py is not
