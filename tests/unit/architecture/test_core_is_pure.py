"""The core packages (domain, scheduler, sim, plan) stay pure: no I/O frameworks, no wall clock.

import-linter (run by `make lint`) checks imports transitively; this test additionally reads every
core module's syntax tree, so it also catches the wall clock (`time`, `datetime.now()`) and threads.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE_PACKAGES = ("domain", "scheduler", "sim", "plan")
FORBIDDEN_MODULES = {
    "sqlalchemy", "alembic", "fastapi", "starlette", "uvicorn", "httpx", "ray", "asyncio", "psycopg",
    "time", "threading", "multiprocessing", "subprocess", "socket", "requests", "typer",
}
FORBIDDEN_CALLS = {"now", "utcnow", "today"}
SRC = Path(__file__).resolve().parents[3] / "src" / "gpupool"


def _core_modules() -> list[Path]:
    return sorted(p for pkg in CORE_PACKAGES for p in (SRC / pkg).rglob("*.py"))


def _violations(source: str, name: str) -> list[str]:
    tree = ast.parse(source, filename=name)
    found: list[str] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        found += [f"imports {n}" for n in names if n.split(".")[0] in FORBIDDEN_MODULES]
        # Only a call reads the clock: `datetime.now()` is one, an injected `self.now` value is not.
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in FORBIDDEN_CALLS:
            found.append(f"reads the wall clock via .{node.func.attr}")
    return [f"{name}: {v}" for v in found]


def test_core_modules_exist() -> None:
    assert len(_core_modules()) >= len(CORE_PACKAGES)


@pytest.mark.parametrize("path", _core_modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_core_module_is_pure(path: Path) -> None:
    assert _violations(path.read_text(), str(path.relative_to(SRC))) == []


def test_checker_catches_each_kind_of_violation() -> None:
    source = "import time\nfrom sqlalchemy import select\nimport datetime\nx = datetime.datetime.now()\n"
    found = " ".join(_violations(source, "sample.py"))
    assert "imports time" in found
    assert "imports sqlalchemy" in found
    assert ".now" in found


def test_checker_accepts_an_injected_now_value() -> None:
    assert _violations("class C:\n    def f(self):\n        return self.now + 1\n", "sample.py") == []
