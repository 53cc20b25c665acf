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
}


def make_executor(settings: Settings) -> Executor:
    """The executor `settings.executor` names (settings validation already restricts the names)."""
    return EXECUTORS[settings.executor](settings)
