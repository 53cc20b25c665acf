"""Fixtures for tests that run real replicas through the local executor.

`local` is a LocalExecutor on a temporary root plus helpers; replicas run with HOME set to a fresh
temporary directory (so a developer's login files do not slow the tests down) and are all killed when the
test ends, passed or not.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gpupool.executors import procfs
from gpupool.executors.base import Handle, ReplicaLaunch, ReplicaStatus
from gpupool.executors.local import LocalExecutor


def wait_until(check: Callable[[], bool], timeout_s: float = 10.0, interval_s: float = 0.02) -> None:
    """Return once `check()` is true; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s} s")
        time.sleep(interval_s)


def quick_base_env(home: Path) -> dict[str, str]:
    """A small base environment: the test's PATH, a private HOME, C.UTF-8."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}


@dataclass
class LocalHarness:
    """A LocalExecutor plus the directories and handles of one test."""

    executor: LocalExecutor
    tmp: Path
    handles: list[Handle] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.tmp / "executor"

    def new_executor(self, read_only: bool | None = None) -> LocalExecutor:
        """Another executor on the same root (what a restarted server would create)."""
        return LocalExecutor(self.root, base_env=quick_base_env(self.tmp / "home"), read_only=read_only)

    def launch(self, command: str, workload_id: str = "w1", replica: int = 0, **changes: object) -> ReplicaLaunch:
        fields: dict[str, object] = {
            "workload_id": workload_id, "replica": replica, "role": "worker", "command": command, "env": {},
            "cwd": self.tmp / "work", "log_dir": self.tmp / "logs" / workload_id,
        }
        fields.update(changes)
        return ReplicaLaunch(**fields)  # type: ignore[arg-type]

    def start(self, command: str, **kwargs: object) -> Handle:
        handle = self.executor.start(self.launch(command, **kwargs))
        self.handles.append(handle)
        return handle

    def wait(self, handle: Handle, executor: LocalExecutor | None = None, timeout_s: float = 10.0) -> ReplicaStatus:
        """Poll until the replica is in a terminal state; return that status."""
        ex = executor or self.executor
        wait_until(lambda: ex.poll(handle).state.is_terminal, timeout_s)
        return ex.poll(handle)

    def wait_running(self, handle: Handle, timeout_s: float = 10.0) -> None:
        wait_until(lambda: self.executor.poll(handle).state == "running", timeout_s)

    @staticmethod
    def until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
        """Return once `check()` is true; fail the test after `timeout_s`."""
        wait_until(check, timeout_s)

    @staticmethod
    def command_of(handle: Handle) -> procfs.ProcessIdentity | None:
        """The identity of a replica's command process (None before it runs)."""
        return command_identity(handle)

    def kill_everything(self) -> None:
        for handle in self.handles:
            self.executor.stop(handle, grace_s=0)
            command = command_identity(handle)
            if command is not None and procfs.is_running(command):
                procfs.signal_group(command.pid, signal.SIGKILL)
        self.executor.close()


def command_identity(handle: Handle) -> procfs.ProcessIdentity | None:
    """The identity of a replica's command process, from the file its supervisor wrote."""
    try:
        data = json.loads((Path(handle["state_dir"]) / "command.json").read_text())
        return procfs.ProcessIdentity(int(data["pid"]), int(data["start_time"]), str(handle.get("boot_id", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalHarness]:
    """A LocalExecutor on a temporary root; every replica it started is killed at the end of the test."""
    (tmp_path / "work").mkdir()
    (tmp_path / "home").mkdir()
    executor = LocalExecutor(tmp_path / "executor", base_env=quick_base_env(tmp_path / "home"))
    harness = LocalHarness(executor, tmp_path)
    yield harness
    harness.kill_everything()
