"""Scripted GPU nodes for server tests: fake GPU descriptions written to files, a stand-in MPS control program
(real processes), and clean-up of what they leave running."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import time
from pathlib import Path
from typing import Any

import yaml

from gpupool.executors.local import LocalExecutor

A100 = "NVIDIA A100-SXM4-80GB"

# plays nvidia-cuda-mps-control: -d starts a background process and writes its PID file; quit on stdin stops it
MPS_STAND_IN = """#!/bin/sh
pidfile="$CUDA_MPS_PIPE_DIRECTORY/nvidia-cuda-mps-control.pid"
if [ "$1" = "-d" ]; then
  sleep 300 </dev/null >/dev/null 2>&1 &
  echo $! > "$pidfile"
  echo "started for $CUDA_VISIBLE_DEVICES" >> "$CUDA_MPS_LOG_DIRECTORY/control.log"
  exit 0
fi
read command
if [ "$command" = "quit" ]; then kill "$(cat "$pidfile")"; fi
"""


def write_description(folder: Path, data: dict[str, Any], name: str = "gpus.yaml") -> Path:
    """Write a fake GPU description (see gpu/fake.py) as YAML and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def a100s(count: int, **card: Any) -> dict[str, Any]:
    """`count` A100-80GB cards, with extra card fields (utilization, events, ...)."""
    return {"model": A100, "memory": "80GiB", "count": count, "sm_count": 108, **card}


def mps_stand_in(folder: Path) -> Path:
    """Install the stand-in MPS control program in `folder` and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    program = folder / "nvidia-cuda-mps-control"
    program.write_text(MPS_STAND_IN)
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return program


def kill_mps_daemons(home: Path) -> None:
    """SIGKILL every MPS daemon (stand-in) whose PID file is under `home`."""
    for pid_file in home.glob("mps/*/pipe/nvidia-cuda-mps-control.pid"):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def stop_local_replicas(home: Path, timeout_s: float = 10.0) -> None:
    """Stop every replica the local executor of a server with this home started (they outlive servers)."""
    root = home / "executor"
    if not root.is_dir():
        return
    executor = LocalExecutor(root)
    handles = [json.loads(f.read_text()) for f in root.glob("replicas/*/*/handle.json")]
    for handle in handles:
        executor.stop(handle, grace_s=0)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(
            executor.poll(h).state.value in ("starting", "running") for h in handles):
        time.sleep(0.05)
    executor.close()
