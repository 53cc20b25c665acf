"""A real `gpupool up` process for end-to-end tests: started on a free port with its own GPUPOOL_HOME,
killed (SIGKILL, to test crash safety) or stopped by the test, and its replicas cleaned up at the end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from tests.support.servers import free_port, wait_until

from gpupool.client.http import Client
from gpupool.executors.local import LocalExecutor

REPO = Path(__file__).resolve().parents[2]
FAST_ENV = {"GPUPOOL_SCHEDULE_INTERVAL_S": "0.1", "GPUPOOL_RECONCILE_INTERVAL_S": "0.1", "GPUPOOL_MIN_RUNTIME_S": "0",
            "GPUPOOL_STOP_GRACE_S": "3", "GPUPOOL_NODE_NAME": "node", "GPUPOOL_MULTI_USER": "false",
            "GPUPOOL_TRUST_USERS": "true"}


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie nobody reaped yet has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def worker_child(parent: int, module: bytes) -> int | None:
    """The pid of `parent`'s child whose command line names `module` (e.g. b"scheduler_process"), if any."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent and \
                    module in (stat.parent / "cmdline").read_bytes():
                return int(stat.parent.name)
        except (OSError, ValueError):
            continue
    return None


def cli_env(home: Path, port: int, **extra: str) -> dict[str, str]:
    """The environment of a gpupool command talking to the test server: its URL and home, a private HOME
    (replicas' login shells stay fast), and nothing of the developer's GPUPOOL_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUPOOL_")}
    env.update({"GPUPOOL_HOME": str(home), "GPUPOOL_URL": f"http://127.0.0.1:{port}", "HOME": str(home / "user"),
                **extra})
    (home / "user").mkdir(parents=True, exist_ok=True)
    return env


def run_cli(args: Sequence[str], env: dict[str, str], cwd: Path = REPO, timeout_s: float = 120,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `python -m gpupool ARGS` and return its result (failing the test on a non-zero exit if `check`)."""
    result = subprocess.run([sys.executable, "-m", "gpupool", *args], env=env, cwd=cwd, capture_output=True,
                            text=True, timeout=timeout_s, check=False)
    if check and result.returncode != 0:
        pytest.fail(f"gpupool {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def run_json(args: Sequence[str], env: dict[str, str], cwd: Path = REPO) -> object:
    """Run a gpupool command with --json and parse its output."""
    return json.loads(run_cli([*args, "--json"], env, cwd).stdout)


@dataclass
class ServerProcess:
    """One `gpupool up` process; `restart()` starts a new one on the same home, port and database."""

    home: Path
    args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return cli_env(self.home, self.port, **FAST_ENV, **self.extra_env)

    def start(self) -> ServerProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        log = (self.home / f"server-{self.starts}.log").open("wb")
        self.process = subprocess.Popen([sys.executable, "-m", "gpupool", "up", "--port", str(self.port),
                                         *self.args], env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1
        wait_until(self._healthy, 60, 0.1, "server start")
        return self

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"gpupool up exited with {self.process.returncode}:\n{self.log()}")
        try:
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.home.glob("server-*.log")))

    def client(self) -> Client:
        return Client(self.url, (self.home / "token").read_text().strip())

    def kill(self) -> None:
        """SIGKILL the server: no shutdown code runs (a crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        """Stop the server the normal way (SIGTERM)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def stop_replicas(self) -> None:
        """Stop every replica this server's executor started (they outlive the server on purpose)."""
        root = self.home / "executor"
        if not root.is_dir():
            return
        executor = LocalExecutor(root)
        for handle_file in root.glob("replicas/*/*/handle.json"):
            executor.stop(json.loads(handle_file.read_text()), grace_s=0)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
                executor.poll(json.loads(f.read_text())).state.value in ("starting", "running")
                for f in root.glob("replicas/*/*/handle.json")):
            time.sleep(0.1)
        executor.close()
