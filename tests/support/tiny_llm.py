"""The tiny LLM server of examples/tiny_llm_server for tests: build its model once (offline, a few seconds
including the imports) and run servers as real processes on free ports."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
from tests.support.servers import free_port, wait_until

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tiny_llm_server"
SERVER = EXAMPLE / "server.py"
MODEL_NAME = "tiny-gpt2"


def build_model(directory: Path) -> Path:
    """Build the tiny GPT-2 into `directory` with the example's builder (a subprocess: torch stays out of
    the test process)."""
    subprocess.run([sys.executable, str(EXAMPLE / "build_model.py"), str(directory)], check=True,
                   capture_output=True, timeout=120)
    return directory


def server_command(model_dir: Path, model: str = MODEL_NAME, port: str = "$PORT") -> str:
    """The shell command that serves the model as `model` on `port` (a service spec's command)."""
    return f"{sys.executable} {SERVER} {model_dir} --model-name {model} --port {port}"


@dataclass
class TinyServer:
    """A running tiny LLM server process."""

    process: subprocess.Popen[bytes]
    url: str

    def stop(self) -> None:
        """Terminate it and wait (kill after 10 s)."""
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start(model_dir: Path, env: Mapping[str, str] | None = None, timeout_s: float = 180) -> TinyServer:
    """Start a server on a free port and wait until /health answers (imports take ~4 s on an idle core; more
    than 50 s were seen on a 2-core machine shared by several test suites, hence the generous default)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, str(SERVER), str(model_dir), "--model-name", MODEL_NAME,
                                "--port", str(port)], env={**os.environ, **(env or {})},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the tiny LLM server exited with {process.returncode}")
        try:
            return httpx.get(url + "/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(healthy, timeout_s, 0.1, "tiny LLM server start")
    except BaseException:
        process.kill()
        process.wait()
        raise
    return TinyServer(process, url)
