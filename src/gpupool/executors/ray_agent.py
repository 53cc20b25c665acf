"""The node agent of cluster mode: the server's hands on one Ray node.

`NodeAgent` is a plain class; `executors/ray.py` runs it as a detached, named Ray actor pinned to its node
(hard node affinity, num_cpus=0, num_gpus=0, restarted by Ray when it crashes). It reuses the local executor
(`executors/local.py`): each replica is a supervised process on the agent's machine, with its state
directory, exit file and log file under the agent's home, so a restarted agent (or a server that comes back)
finds every replica again from those files alone. This module imports no Ray: the class is plain Python.

What the node declares comes from the environment the node's `ray start` ran with (a Ray actor inherits it):
    GPUPOOL_AGENT_NODE_NAME   the node's name in gpupool (default: the host name)
    GPUPOOL_AGENT_GPUS        simulated GPUs, e.g. 2xA100-80GB (demos and tests; real GPUs: not yet, see
                              docs/cluster.md)
    GPUPOOL_AGENT_HOME        the agent's state: executor/ (replica state) and logs/ (default
                              /var/lib/gpupool-agent)

Fencing: a replica must not outlive a partition of its node for long, since the server retries it on
another node once Ray declares this one dead. The agent checks every FENCE_CHECK_S that it can reach the
cluster's head (a TCP connect to the GCS address); when it has not reached it for `fence_after_s`, it stops
every replica it runs (SIGKILL: the retry may already write next to them). The server being down does not
count: replicas keep running across a server restart.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpupool.executors.base import ExecutorError, Handle, ReplicaLaunch, ReplicaState
from gpupool.executors.local import LocalExecutor, pick_free_ports

log = logging.getLogger("gpupool.agent")
DEFAULT_AGENT_HOME = Path("/var/lib/gpupool-agent")
LOG_READ_MAX_BYTES = 1024 * 1024  # one read of a log through the agent: 1 MiB, ~10k lines, a fraction of a second
FENCE_CHECK_S = 0.5  # how often the agent checks it reaches the head; a tenth of the default fencing bound
CONNECT_TIMEOUT_S = 1.0  # a TCP connect inside a healthy cluster takes milliseconds


@dataclasses.dataclass(frozen=True)
class NodeDescription:
    """What an agent tells the server about its node."""

    name: str
    address: str
    cpus: float
    memory_mib: int
    gpus: str
    labels: dict[str, str]


def _memory_mib() -> int:
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 0


def reachable(address: str) -> bool:
    """True when a TCP connection to `address` (host:port) succeeds within CONNECT_TIMEOUT_S."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            return True
    except (OSError, ValueError):
        return False


class NodeAgent:
    """Runs and watches the replicas of one node (see the module docstring). `address`: the node's IP in
    the cluster; `cpus` and `memory_mib`: what Ray says the node has; `head`: host:port of the GCS, whose
    reachability keeps the replicas' lease; `fence_after_s`: how long unreachable before they are stopped
    (0: never fence). `env` replaces os.environ (tests)."""

    def __init__(self, address: str, cpus: float, memory_mib: int = 0, head: str = "", fence_after_s: float = 0.0,
                 env: dict[str, str] | None = None, check: Callable[[str], bool] = reachable) -> None:
        environ = dict(os.environ if env is None else env)
        self.home = Path(environ.get("GPUPOOL_AGENT_HOME") or DEFAULT_AGENT_HOME)
        self.description = NodeDescription(
            name=environ.get("GPUPOOL_AGENT_NODE_NAME") or socket.gethostname(), address=address, cpus=cpus,
            memory_mib=memory_mib or _memory_mib(), gpus=environ.get("GPUPOOL_AGENT_GPUS", ""), labels={})
        self.executor = LocalExecutor(self.home / "executor")
        self.head = head
        self.fence_after_s = fence_after_s
        self._check = check
        self._last_contact = time.monotonic()
        self.fenced: list[str] = []
        self._stop = threading.Event()
        if head and fence_after_s > 0:
            threading.Thread(target=self._fence_loop, name="gpupool-fence", daemon=True).start()

    def describe(self) -> NodeDescription:
        """The node's name, address, CPUs, memory, declared GPUs and labels."""
        return self.description

    def start(self, launch: ReplicaLaunch) -> Handle:
        """Start the replica on this node (the local executor's start: idempotent per replica attempt). Its
        log is kept on this node under the agent's home; the server copies it when the replica ends."""
        local = dataclasses.replace(launch, log_dir=self.home / "logs" / launch.workload_id)
        local.log_dir.mkdir(parents=True, exist_ok=True)
        return self.executor.start(local)

    def poll(self, handle: Handle) -> tuple[str, int | None, str]:
        """(state, exit code, message) of the replica: the local executor's poll, as plain values."""
        status = self.executor.poll(handle)
        return status.state.value, status.exit_code, status.message

    def stop(self, handle: Handle, grace_s: float) -> None:
        """Stop the replica (the local executor's stop: returns at once, idempotent)."""
        self.executor.stop(handle, grace_s)

    def read_log(self, handle: Handle, offset: int, max_bytes: int = LOG_READ_MAX_BYTES) -> tuple[str, int, bool]:
        """Whole lines of the replica's log from byte `offset` (at most `max_bytes`): (text, the offset after
        them, whether the replica had ended before the read, so that no line can follow)."""
        ended = ReplicaState(self.poll(handle)[0]).is_terminal
        path = Path(str(handle.get("log_path", "")))
        try:
            with path.open("rb") as file:
                file.seek(offset)
                data = file.read(max_bytes)
        except OSError:
            return "", offset, ended
        cut = data.rfind(b"\n") + 1
        if cut == 0 and ended and len(data) < max_bytes:
            cut = len(data)  # the last line, without its newline
        return data[:cut].decode("utf-8", errors="replace"), offset + cut, ended and cut == len(data)

    def free_ports(self, count: int) -> list[int]:
        """`count` TCP ports free on this node now."""
        if count < 0:
            raise ExecutorError(f"cannot choose {count} ports")
        return pick_free_ports(count, "0.0.0.0")

    def ping(self) -> str:
        """The node's name (the server checks the agent answers)."""
        return self.description.name

    def running_handles(self) -> list[Handle]:
        """The handles of the replicas of this node that have not ended, from their state directories."""
        handles = []
        for path in sorted((self.home / "executor" / "replicas").glob("*/*/handle.json")):
            try:
                handle: dict[str, Any] = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if not self.executor.poll(handle).state.is_terminal:
                handles.append(handle)
        return handles

    def fence_step(self) -> list[str]:
        """One fencing check: stop every replica (no grace) when the head has been unreachable for
        `fence_after_s`; returns the state directories of the replicas stopped now."""
        now = time.monotonic()
        if self._check(self.head):
            self._last_contact = now
            return []
        if now - self._last_contact < self.fence_after_s:
            return []
        stopped = []
        for handle in self.running_handles():
            self.executor.stop(handle, 0)
            stopped.append(str(handle.get("state_dir")))
        if stopped:
            log.warning("head %s unreachable for %.1f s: stopped %d replica(s)", self.head, now - self._last_contact,
                        len(stopped))
            self.fenced += stopped
        return stopped

    def _fence_loop(self) -> None:
        while not self._stop.wait(FENCE_CHECK_S):
            try:
                self.fence_step()
            except Exception:  # a fencing bug must not end the loop; the next check tries again
                log.exception("fencing check failed")

    def close(self) -> None:
        """Stop the fencing thread; replicas keep running."""
        self._stop.set()
        self.executor.close()
