"""The node agent of cluster mode: the server's hands on one Ray node.

`NodeAgent` is a plain class; `executors/ray.py` runs it as a detached, named Ray actor pinned to its node
(hard node affinity, num_cpus=0, num_gpus=0, restarted by Ray when it crashes). It reuses the local executor
(`executors/local.py`): each replica is a supervised process on the agent's machine, with its state
directory, exit file and log file under the agent's home, so a restarted agent (or a server that comes back)
finds every replica again from those files alone. This module imports no Ray: the class is plain Python.

What the node declares comes from the environment the node's `ray start` ran with (a Ray actor inherits it):
    GPUPOOL_AGENT_NODE_NAME   the node's name in gpupool (default: the host name)
    GPUPOOL_AGENT_GPUS        simulated GPUs, e.g. 2xA100-80GB (demos and tests); unset: the node's GPUs
                              are discovered with NVML (none, said once in the log, without NVML)
    GPUPOOL_AGENT_GPU_DESCRIPTION
                              a fake NVML description file (the format of `gpupool up --gpu-description`,
                              `gpu/fake.py`) read through the real NVML backend code instead of NVML
    GPUPOOL_AGENT_HOME        the agent's state: executor/ (replica state) and logs/ (default
                              /var/lib/gpupool-agent)
    GPUPOOL_AGENT_NOTEBOOK_WARM_POOL
                              parked JupyterLab servers kept on this node per Python (`executors/warm_pool.py`):
                              for the interpreter the agent runs on and for each environment the server names
                              (its GPUPOOL_NOTEBOOK_WARM_ENVIRONMENTS, sent on every node pass, see `describe`);
                              0 or unset: none

A replica whose spec names a Python environment starts only when this node sees that environment's finished
build at the path the server gave (the environments live under the server's home, on the shared filesystem of
cluster mode); otherwise the start fails with an error that says so, rather than running in the wrong Python.
The warm slots of an environment are kept the same way: only while this node sees its finished build; a
notebook naming it finds its slots by its `bin/python` (the first `python` on the notebook's PATH), exactly as
on the local executor, so a slot is claimed once (an atomic rename) and becomes one notebook only.

The discovered cards (model, memory, UUIDs, MIG devices) travel in the node's description as
`GpuInventory.to_dict`; the agent samples them here (`sample_gpus`) with each GPU process's process group and
session as seen on this node, so the server attributes GPU memory to the node's replicas by their session ids.

Fencing: the agent starts the node's fencing watchdog (`executors/ray_fence.py`), a process of its own that
stops the node's replicas when the node's raylet is gone or the Ray head has been unreachable for
`fence_after_s` (a partition), since the server retries their workloads elsewhere meanwhile.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpupool.executors.base import ExecutorError, Handle, ReplicaLaunch, ReplicaState
from gpupool.executors.environment import ENVIRONMENT_COMPLETE, ENVIRONMENT_DIR_VAR, default_base_env
from gpupool.executors.local import LocalExecutor, pick_free_ports
from gpupool.gpu.fake import FakeBackend, read_description
from gpupool.gpu.monitor import process_groups
from gpupool.gpu.nvml import NvmlBackend
from gpupool.gpu.types import GpuBackend, NodeSample

log = logging.getLogger("gpupool.agent")
DEFAULT_AGENT_HOME = Path("/var/lib/gpupool-agent")
LOG_READ_MAX_BYTES = 1024 * 1024  # one read of a log through the agent: 1 MiB, ~10k lines, a fraction of a second
CONNECT_TIMEOUT_S = 1.0  # a TCP connect inside a healthy cluster takes milliseconds
MAX_WARM_POOL = 64  # as the server's notebook_warm_pool: more parked servers than that is a typo


@dataclasses.dataclass(frozen=True)
class NodeDescription:
    """What an agent tells the server about its node."""

    name: str
    address: str
    cpus: float
    memory_mib: int
    gpus: str
    labels: dict[str, str]
    gpu_inventory: dict[str, Any] = dataclasses.field(default_factory=dict)  # discovered (GpuInventory.to_dict)
    gpus_simulated: bool = False  # the discovered cards come from a description marked `simulated: true`


def _memory_mib() -> int:
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 0


def raylet_pid() -> int:
    """The pid of this node's raylet: the nearest ancestor of this process named `raylet` (a Ray worker's
    parent), else the parent process."""
    pid = os.getpid()
    for _ in range(8):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid <= 1:
            break
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "raylet":
                return pid
        except OSError:
            break
    return os.getppid()


def start_watchdog(home: Path, head: str, raylet: int, fence_after_s: float,
                   orders: Path | None = None) -> subprocess.Popen[bytes]:
    """Start the fencing watchdog of the node (in a session of its own: it outlives the agent; a second
    one for the same home exits at once), carrying out the stop orders in `orders` if given. Its output
    goes to `home/fence.log`."""
    home.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "gpupool.executors.ray_fence", "--home", str(home), "--head", head,
            "--raylet-pid", str(raylet), "--after", str(fence_after_s)]
    with (home / "fence.log").open("ab") as out:
        return subprocess.Popen([*argv, *(["--orders", str(orders)] if orders else [])],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)


def _warm_pool_size(environ: dict[str, str]) -> int:
    """GPUPOOL_AGENT_NOTEBOOK_WARM_POOL as a count (0 when unset; a bad value is logged and taken as 0)."""
    text = environ.get("GPUPOOL_AGENT_NOTEBOOK_WARM_POOL", "").strip() or "0"
    if text.isdigit() and int(text) <= MAX_WARM_POOL:
        return int(text)
    log.warning("GPUPOOL_AGENT_NOTEBOOK_WARM_POOL=%r is not a count from 0 to %d; no warm pool on this node", text,
                MAX_WARM_POOL)
    return 0


def reachable(address: str) -> bool:
    """True when a TCP connection to `address` (host:port) succeeds within CONNECT_TIMEOUT_S."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            return True
    except (OSError, ValueError):
        return False


def discover_gpus(environ: dict[str, str], node: str) -> GpuBackend:
    """The GPU backend of a node that declares no simulated GPUs: the fake NVML of the description file
    GPUPOOL_AGENT_GPU_DESCRIPTION (its UUIDs seeded by the node's name too, so that two nodes given the same
    file have distinct cards), else NVML. ValidationError for an unreadable description file."""
    path = environ.get("GPUPOOL_AGENT_GPU_DESCRIPTION", "").strip()
    if not path:
        return NvmlBackend()
    data = read_description(Path(path))
    return FakeBackend({**data, "node": f"{data.get('node', 'fake')}/{node}"})


def sample_on_node(backend: GpuBackend, now: float) -> NodeSample:
    """One sample of `backend` with the (process group, session) of each GPU process resolved on this node,
    which the server cannot do for a remote node's pids."""
    sample = backend.sample(now)
    groups = tuple((p.pid, *process_groups(p.pid)) for p in sample.processes)
    return dataclasses.replace(sample, process_groups=groups)


class NodeAgent:
    """Runs and watches the replicas of one node (see the module docstring). `address`: the node's IP in
    the cluster; `cpus` and `memory_mib`: what Ray says the node has; `head`: host:port of the GCS, whose
    reachability the fencing watchdog checks; `fence_after_s`: how long unreachable before the replicas are
    stopped (0 or no head: no watchdog); `fence_orders`: the server's folder of stop orders on the shared
    storage (the watchdog carries out those of this node, see `executors/ray_fence.py`). `env` replaces
    os.environ (tests)."""

    def __init__(self, address: str, cpus: float, memory_mib: int = 0, head: str = "", fence_after_s: float = 0.0,
                 fence_orders: str = "", env: dict[str, str] | None = None) -> None:
        environ = dict(os.environ if env is None else env)
        self.home = Path(environ.get("GPUPOOL_AGENT_HOME") or DEFAULT_AGENT_HOME)
        self.description = NodeDescription(
            name=environ.get("GPUPOOL_AGENT_NODE_NAME") or socket.gethostname(), address=address, cpus=cpus,
            memory_mib=memory_mib or _memory_mib(), gpus=environ.get("GPUPOOL_AGENT_GPUS", ""), labels={})
        base_env = default_base_env(os.environ, str(Path(sys.executable).parent))  # the local executor's default
        own_python = shutil.which("python", path=base_env["PATH"])
        self._own_pythons = [own_python] if own_python else []
        self._warm_environments: tuple[str, ...] = ()  # as the server last named them (describe)
        self.executor = LocalExecutor(self.home / "executor", base_env=base_env,
                                      warm_notebooks=_warm_pool_size(environ), warm_pythons=self.warm_pythons)
        self._gpus: GpuBackend | None = None  # the node's GPU backend (declared GPUs: made on the first sample)
        if not self.description.gpus:
            self._discover(environ)
        self.watchdog: subprocess.Popen[bytes] | None = None
        if head and fence_after_s > 0:
            orders = Path(fence_orders) / self.description.name if fence_orders else None
            self.watchdog = start_watchdog(self.home, head, raylet_pid(), fence_after_s, orders)

    def _discover(self, environ: dict[str, str]) -> None:
        """Discover the node's GPUs (see discover_gpus) into the description; none, logged once, without NVML."""
        backend = discover_gpus(environ, self.description.name)
        inventory = backend.discover()
        if inventory.unavailable is not None:
            log.info("node %s: no GPUs (%s)", self.description.name, inventory.unavailable)
        self._gpus = backend
        simulated = bool(getattr(backend, "simulated", False))
        self.description = dataclasses.replace(self.description, gpu_inventory=inventory.to_dict(),
                                               gpus_simulated=simulated)

    def describe(self, warm_environments: Sequence[str] | None = None) -> NodeDescription:
        """The node's name, address, CPUs, memory, declared or discovered GPUs and labels. `warm_environments`
        (when given) replaces the Pythons of environments (`<build>/bin/python` on the shared filesystem) whose
        notebooks get this node's warm slots too: the server sends them with every node pass, so an agent
        restarted by Ray has them again within one pass, and a change of the list wakes the pool's refill."""
        if warm_environments is not None:
            named = tuple(dict.fromkeys(str(p) for p in warm_environments))
            if named != self._warm_environments:
                self._warm_environments = named
                self.executor.warm.wake()
        return self.description

    def warm_pythons(self) -> list[str]:
        """The Pythons this node keeps warm slots of (when its pool is on): the interpreter the agent runs on,
        then each environment the server named whose finished build this node sees (one it does not see yet
        is skipped until it does, so no slot runs a half-built or missing environment)."""
        seen = [p for p in self._warm_environments if (Path(p).parent.parent / ENVIRONMENT_COMPLETE).exists()]
        return [*self._own_pythons, *seen]

    def start(self, launch: ReplicaLaunch) -> Handle:
        """Start the replica on this node (the local executor's start: idempotent per replica attempt). Its
        log is kept on this node under the agent's home; the server copies it when the replica ends."""
        environment = launch.env.get(ENVIRONMENT_DIR_VAR)
        if environment and not (Path(environment) / ENVIRONMENT_COMPLETE).exists():
            raise ExecutorError(f"node {self.description.name} does not see the Python environment at {environment}: "
                                "in cluster mode the server's home (where environments are built) must be on the "
                                "shared filesystem, at the same path on every node")
        local = dataclasses.replace(launch, log_dir=self.home / "logs" / launch.workload_id)
        local.log_dir.mkdir(parents=True, exist_ok=True)
        return self.executor.start(local)

    def release_unstarted(self, workload_id: str, replica: int, attempt: int, grace_s: float) -> None:
        """Release what a start of the replica that died before its handle was recorded left on this node (a
        warm slot it claimed goes back, a supervisor it spawned is stopped); see the local executor."""
        self.executor.release_unstarted(workload_id, replica, attempt, grace_s)

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
        if ended and len(data) < max_bytes:
            cut = len(data)  # all that is left, the last line even without its newline
        return data[:cut].decode("utf-8", errors="replace"), offset + cut, ended and cut == len(data)

    def free_ports(self, count: int) -> list[int]:
        """`count` TCP ports free on this node now."""
        if count < 0:
            raise ExecutorError(f"cannot choose {count} ports")
        return pick_free_ports(count, "0.0.0.0")

    def sees(self, path: str, content: str) -> bool:
        """Whether the file `path` exists on this node with exactly `content` (the shared-storage check:
        the server writes a marker under its storage root, every node must read the same one)."""
        try:
            return Path(path).read_text(encoding="utf-8") == content
        except (OSError, UnicodeDecodeError):
            return False

    def sample_gpus(self, now: float) -> NodeSample:
        """One reading of the node's GPUs, stamped `now` (the server's clock): taken here, on the node, by
        the agent's own GPU backend (the simulated GPUs the node declares, else those it discovered), with
        the process group and session of each GPU process on this node. The server's GPU sampler collects it
        through the agent."""
        if self._gpus is None and self.description.gpus:
            from gpupool.server.local_node import declared_description  # noqa: PLC0415

            # seeded by the node's name, as the server's view of the same cards: the same UUIDs on both sides
            self._gpus = FakeBackend(declared_description(self.description.gpus, self.description.name))
        return sample_on_node(self._gpus, now) if self._gpus is not None else NodeSample(now)

    def session_id(self, handle: Handle) -> int | None:
        """The session id of the replica's processes on this node while it runs (the local executor's)."""
        return self.executor.session_id(handle)

    def ping(self) -> str:
        """The node's name (the server checks the agent answers)."""
        return self.description.name

    def close(self) -> None:
        """Release the local executor and the GPU backend; replicas and the watchdog keep running."""
        self.executor.close()
        if self._gpus is not None:
            self._gpus.close()
