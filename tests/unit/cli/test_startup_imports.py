"""A command imports only what it needs (start-up time: benchmarks/cli). Guarded by module names, not by
timings, so that a busy test machine cannot make it flaky."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY_EVERYWHERE = ("sqlalchemy", "fastapi", "uvicorn", "alembic", "pydantic_settings", "gpupool.server.settings",
                    "gpupool.sim", "gpupool.plan", "gpupool.scheduler", "gpupool.gpu", "gpupool.executors", "numpy")


def imported(args: list[str], tmp_path: Path) -> set[str]:
    """The modules `python -X importtime -m gpupool ARGS` imports (against a server that is not there)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GPUPOOL_HOME": str(tmp_path),
           "GPUPOOL_URL": "http://127.0.0.1:1"}
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "gpupool", *args], env=env,
                            capture_output=True, text=True, check=False, timeout=60)
    return {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}


def test_version_loads_no_command_module_nor_the_client(tmp_path: Path) -> None:
    modules = imported(["version"], tmp_path)
    assert "gpupool.cli.main" in modules  # the measurement works
    assert not {m for m in modules if m.startswith(("gpupool.cli.", "gpupool.client", "httpx", *HEAVY_EVERYWHERE))
                and m != "gpupool.cli.main"}


@pytest.mark.parametrize("args", [["ls"], ["show", "1"], ["logs", "1"], ["queues"], ["nodes"], ["whoami"]])
def test_server_commands_load_the_client_but_not_the_server_nor_httpx_cli(args: list[str], tmp_path: Path) -> None:
    modules = imported(args, tmp_path)
    assert "gpupool.client.http" in modules and "httpx" in modules
    assert not {m for m in modules if m.startswith(HEAVY_EVERYWHERE)}
    assert "httpx._main" not in modules and "pygments" not in modules and "click" not in modules
