"""Executors by name: an explicit registry, so settings can pick one with a string."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from gpupool.domain.errors import GpupoolError
from gpupool.executors.base import Executor
from gpupool.executors.fake import FakeExecutor
from gpupool.executors.local import LocalExecutor
from gpupool.server.environments import EnvironmentStore, uv_settings
from gpupool.server.settings import Settings

EXECUTORS: dict[str, Callable[[Settings], Executor]] = {
    "local": lambda settings: _local_executor(settings),  # noqa: PLW0108  (defined below)
    "fake": lambda _settings: FakeExecutor(),
    "ray": lambda settings: _ray_executor(settings),  # noqa: PLW0108  (defined below)
}


def _local_executor(settings: Settings) -> LocalExecutor:
    """The local executor, with the notebook warm pool of `notebook_warm_pool` slots per Python."""
    return LocalExecutor(settings.executor_dir, log_cap_bytes=settings.log_max_bytes,
                         warm_notebooks=settings.notebook_warm_pool, warm_pythons=lambda: warm_pythons(settings))


def warm_pythons(settings: Settings) -> list[str]:
    """The Pythons whose notebooks get warm slots: the interpreter notebooks run on without an environment
    (`python` beside the server's), and those of `warm_environment_pythons`."""
    default = Path(sys.executable).parent / "python"
    return [str(default) if default.exists() else shutil.which("python") or sys.executable,
            *warm_environment_pythons(settings)]


def warm_environment_pythons(settings: Settings) -> list[str]:
    """`bin/python` of each built environment in `notebook_warm_environments` (a missing or unbuilt one is
    skipped until it exists): under the server's home, so in cluster mode the same path on every node."""
    store = EnvironmentStore(settings.home / "environments", uv_settings(settings))
    found = []
    for name in settings.notebook_warm_environments.split():
        try:
            found.append(str(store.bin_dir(name) / "python"))
        except GpupoolError:
            continue
    return found


def _ray_executor(settings: Settings) -> Executor:
    """The Ray executor of cluster mode (imported here only: the local mode never imports Ray)."""
    from gpupool.executors.ray import FENCE_ORDERS_DIR, RayExecutor  # noqa: PLC0415

    return RayExecutor(settings.ray_address or "auto", fence_after_s=settings.ray_fence_after_s,
                       silence_limit_s=settings.agent_silence_limit_s,
                       fence_orders_dir=settings.storage_dir / FENCE_ORDERS_DIR,
                       warm_environments=lambda: warm_environment_pythons(settings))


def make_executor(settings: Settings) -> Executor:
    """The executor `settings.executor` names (settings validation already restricts the names); the ray
    executor whenever `settings.ray_address` is set."""
    return EXECUTORS["ray" if settings.ray_address else settings.executor](settings)
