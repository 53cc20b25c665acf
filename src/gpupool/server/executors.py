"""Executors by name: an explicit registry, so settings can pick one with a string."""

from __future__ import annotations

from collections.abc import Callable

from gpupool.executors.base import Executor
from gpupool.executors.fake import FakeExecutor
from gpupool.executors.local import LocalExecutor
from gpupool.server.settings import Settings

EXECUTORS: dict[str, Callable[[Settings], Executor]] = {
    "local": lambda settings: LocalExecutor(settings.executor_dir, log_cap_bytes=settings.log_max_bytes),
    "fake": lambda _settings: FakeExecutor(),
    "ray": lambda settings: _ray_executor(settings),  # noqa: PLW0108  (defined below)
}


def _ray_executor(settings: Settings) -> Executor:
    """The Ray executor of cluster mode (imported here only: the local mode never imports Ray)."""
    from gpupool.executors.ray import RayExecutor  # noqa: PLC0415

    return RayExecutor(settings.ray_address or "auto", fence_after_s=settings.ray_fence_after_s)


def make_executor(settings: Settings) -> Executor:
    """The executor `settings.executor` names (settings validation already restricts the names); the ray
    executor whenever `settings.ray_address` is set."""
    return EXECUTORS["ray" if settings.ray_address else settings.executor](settings)
