"""A command imports only what it needs (start-up time: benchmarks/cli). Guarded by module names, not by
timings, so that a busy test machine cannot make it flaky."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY_EVERYWHERE = ("sqlalchemy", "fastapi", "uvicorn", "alembic", "pydantic_settings", "gpupool.server.settings",
                    "gpupool.sim", "gpupool.plan", "gpupool.scheduler", "gpupool.gpu", "gpupool.executors", "numpy")
# what the everyday commands no longer need: the typed client and its stack, the API models, the spec parser
TYPED_CLIENT = ("gpupool.client.http", "httpx", "httpcore", "pydantic", "pydantic_core", "gpupool.api",
                "gpupool.server", "gpupool.domain.specs", "gpupool.domain.resources")
EVERYDAY = [["ls"], ["show", "1"], ["logs", "1"], ["queues"], ["nodes"], ["whoami"], ["top", "--once"],
            ["submit", "examples/hello.yaml"], ["cancel", "1"], ["wait", "1"], ["projects"], ["users"], ["tokens"],
            ["report", "usage"], ["report", "idle"], ["nodes", "show", "n1"], ["ls", "--json"], ["console"],
            ["sweep", "submit", "examples/hello.yaml"], ["sweep", "show", "s"], ["sweep", "best", "s"],
            ["sweep", "stop", "s"], ["envs", "ls"], ["envs", "show", "e"], ["envs", "rm", "e"],
            ["notebook", "create"], ["notebook", "open", "1", "--print"], ["notebook", "ls"], ["notebook", "stop", "1"],
            ["notebook", "start", "1"], ["service", "ls"], ["service", "show", "s"], ["service", "scale", "s", "--max",
            "2"], ["service", "update", "s", "examples/hello.yaml"], ["service", "rollback", "s"],
            ["service", "logs", "s"], ["service", "tokens", "create", "t", "-p", "p"],
            ["service", "tokens", "ls", "-p", "p"], ["service", "tokens", "revoke", "1", "-p", "p"],
            ["pipeline", "submit", "examples/hello.yaml"], ["pipeline", "run", "p"], ["pipeline", "runs", "p"],
            ["pipeline", "show", "1"], ["pipeline", "retry", "1"], ["pipeline", "cancel", "1"],
            ["pipeline", "pause", "p"], ["pipeline", "resume", "p"]]


def imported(args: list[str], tmp_path: Path) -> set[str]:
    """The modules `python -X importtime -m gpupool ARGS` imports (against a server that is not there)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GPUPOOL_HOME": str(tmp_path),
           "GPUPOOL_URL": "http://127.0.0.1:1"}
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "gpupool", *args], env=env,
                            capture_output=True, text=True, check=False, timeout=60,
                            cwd=Path(__file__).resolve().parents[3])
    return {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}


def _under(modules: set[str], prefixes: tuple[str, ...]) -> set[str]:
    return {m for m in modules if m in prefixes or m.startswith(tuple(p + "." for p in prefixes))}


def test_version_loads_no_command_module_nor_a_client(tmp_path: Path) -> None:
    modules = imported(["version"], tmp_path)
    assert "gpupool.cli.main" in modules  # the measurement works
    assert not {m for m in modules if m.startswith(("gpupool.cli.", "gpupool.client", "rich", *HEAVY_EVERYWHERE,
                                                    *TYPED_CLIENT)) and m != "gpupool.cli.main"}


@pytest.mark.parametrize("args", EVERYDAY, ids=" ".join)
def test_everyday_commands_use_the_light_client(args: list[str], tmp_path: Path) -> None:
    modules = imported(args, tmp_path)
    assert "gpupool.client.light" in modules  # the command ran as far as asking the server
    assert not _under(modules, HEAVY_EVERYWHERE + TYPED_CLIENT)
    # the error it prints (the server is not there) goes to a pipe here: no Rich either
    assert not _under(modules, ("rich", "click", "pygments"))


def test_envs_create_uses_the_light_client_and_rich_for_its_spinner(tmp_path: Path) -> None:
    modules = imported(["envs", "create", "e"], tmp_path)
    assert "gpupool.client.light" in modules and "rich.status" in modules
    assert not _under(modules, HEAVY_EVERYWHERE + TYPED_CLIENT)


def test_port_forward_uses_the_light_client_and_loads_websockets_only_for_a_tunnel(tmp_path: Path) -> None:
    modules = imported(["port-forward", "1", "8080"], tmp_path)
    assert "gpupool.client.light" in modules
    assert not _under(modules, HEAVY_EVERYWHERE + TYPED_CLIENT + ("websockets", "asyncio", "rich"))


def test_no_command_module_names_the_typed_client() -> None:
    """No CLI module imports the typed client or the SDK calls built on it, not even lazily: a command on the
    typed client (httpx, pydantic) would be a regression that the command lists above might miss."""
    cli = Path(__file__).resolve().parents[3] / "src" / "gpupool" / "cli"
    for module in sorted(cli.glob("*.py")):
        text = module.read_text()
        for banned in ("gpupool.client.http", "gpupool.client.services", "gpupool.client.pipelines", "import httpx"):
            assert banned not in text, (module.name, banned)


def test_help_of_up_loads_neither_the_server_nor_its_settings(tmp_path: Path) -> None:
    modules = imported(["up", "--help"], tmp_path)
    assert "gpupool.cli.server" in modules
    assert not _under(modules, (*HEAVY_EVERYWHERE, "pydantic", "gpupool.server"))
