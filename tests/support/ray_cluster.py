"""A real Ray cluster for tests, in network namespaces of its own.

Ray in the root network namespace rewrites 127.0.0.1 to the machine's outward address, so the cluster is
built apart: a bridge namespace and one namespace per node, joined by veth pairs on 10.200.0.0/24
(node i at 10.200.0.i). `ray start --head` runs in the first, workers in the others, each with its own
--temp-dir and, through its environment, the gpupool node name and simulated GPUs its agent declares
(GPUPOOL_AGENT_NODE_NAME, GPUPOOL_AGENT_GPUS). Names carry the test process's pid, so two runs never
collide. Teardown kills every process inside the namespaces (by pid: `ip netns pids`) and deletes them;
`ray stop` is never used (it kills every Ray process of the host).

Needs root (CI runs as root): `require_root()` skips with that reason, and fails when CI=true.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

RAY = str(Path(sys.executable).parent / "ray")
SUBNET = "10.200.0"
HEAD_PORT = 6379
# Ray's node health check: every 0.5 s, 3 misses declare a node dead (~1.5-3 s measured here), instead of the
# default ~13 s; the values documented in docs/cluster.md.
FAST_HEALTH = ('{"health_check_period_ms":500,"health_check_failure_threshold":3,"health_check_timeout_ms":500,'
               '"health_check_initial_delay_ms":0}')
# Lean Ray: no dashboard, no autoscaler monitor, a 100 MB object store (the smallest Ray accepts is 75 MB),
# no memory monitor and no pre-started idle worker: about 0.7 GB for three nodes instead of 2.6 GB.
LEAN_ENV = {"RAY_memory_monitor_refresh_ms": "0", "RAY_enable_worker_prestart": "0",
            "RAY_prestart_worker_first_driver": "0", "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_raylet_start_wait_time_s": "180"}
LEAN_FLAGS = ["--object-store-memory=100000000", "--disable-usage-stats", "--include-log-monitor=false"]
# Fixed ports (each node has a namespace of its own, so they never clash): with dynamic ones the raylet waits
# for its agents to write port files, and under load (two shared cores) it times out before they do.
PORT_FLAGS = ["--node-manager-port=7000", "--object-manager-port=7001", "--dashboard-agent-listen-port=7002",
              "--dashboard-agent-grpc-port=7003", "--metrics-export-port=7004", "--runtime-env-agent-port=7005"]
STARTUP_PRIORITY_S = 0.05  # new processes of a starting node get their priority within 50 ms
START_TIMEOUT_S = 90.0  # a node joins in ~3 s on an idle machine; six engineers share two cores here


def require_root() -> None:
    """Skip the calling test (fail it when CI=true) unless this process is root: namespaces need root."""
    if os.geteuid() == 0 and shutil.which("ip"):
        return
    reason = "the Ray cluster tests build network namespaces, which needs root and iproute2"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI must run them")
    pytest.skip(reason)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


@dataclass
class RayNode:
    """One node: its namespace, address, gpupool name and the `ray start` environment it got."""

    index: int
    netns: str
    name: str
    gpus: str
    cpus: int
    temp_dir: Path

    @property
    def address(self) -> str:
        return f"{SUBNET}.{self.index}"

    def pids(self) -> list[int]:
        """Every process running in this node's namespace now."""
        out = _ip("netns", "pids", self.netns, check=False).stdout
        return sorted(int(p) for p in out.split())

    def processes(self) -> list[str]:
        """The command line of every process of this node's namespace (like ps inside it)."""
        lines = []
        for pid in self.pids():
            try:
                lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
        return lines

    def raylet_pid(self) -> int | None:
        """The pid of this node's raylet, or None when it is gone."""
        for pid in self.pids():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "raylet":
                    return pid
            except OSError:
                continue
        return None


@dataclass
class RayCluster:
    """A Ray cluster in namespaces (see the module docstring). `exec_argv` runs a command in a node's namespace."""

    tag: str
    root: Path
    nodes: list[RayNode] = field(default_factory=list)
    bridge: str = ""

    @property
    def head(self) -> RayNode:
        return self.nodes[0]

    @property
    def address(self) -> str:
        return f"{self.head.address}:{HEAD_PORT}"

    @staticmethod
    def exec_argv(node: RayNode, argv: Sequence[str]) -> list[str]:
        """`argv` run inside `node`'s network namespace."""
        return ["ip", "netns", "exec", node.netns, *argv]

    def add_namespace(self, index: int, name: str, gpus: str = "", cpus: int = 2) -> RayNode:
        """A namespace for node `index` (address 10.200.0.<index>) plugged into the bridge."""
        node = RayNode(index, f"{self.tag}n{index}", name, gpus, cpus, self.root / f"ray-{index}")
        _ip("netns", "add", node.netns)
        self.nodes.append(node)
        _ip("-n", node.netns, "link", "set", "lo", "up")
        _ip("link", "add", "eth0", "netns", node.netns, "type", "veth", "peer", "name", f"bv{index}",
            "netns", self.bridge)
        _ip("-n", node.netns, "addr", "add", f"{node.address}/24", "dev", "eth0")
        _ip("-n", node.netns, "link", "set", "eth0", "up")
        _ip("-n", self.bridge, "link", "set", f"bv{index}", "master", "br0")
        _ip("-n", self.bridge, "link", "set", f"bv{index}", "up")
        return node

    def start_node(self, node: RayNode, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """`ray start` for `node` (the head for index 1, else a worker joining the head); returns at once."""
        node.temp_dir.mkdir(parents=True, exist_ok=True)
        common = [f"--node-ip-address={node.address}", f"--temp-dir={node.temp_dir}", f"--num-cpus={node.cpus}",
                  "--num-gpus=0", *LEAN_FLAGS, *PORT_FLAGS]
        if node.index == 1:
            argv = [RAY, "start", "--head", f"--port={HEAD_PORT}", "--include-dashboard=false", "--no-monitor",
                    f"--system-config={FAST_HEALTH}", *common]
        else:
            argv = [RAY, "start", f"--address={self.address}", *common]
        full_env = {**os.environ, **LEAN_ENV, "GPUPOOL_AGENT_NODE_NAME": node.name, "GPUPOOL_AGENT_GPUS": node.gpus,
                    "GPUPOOL_AGENT_HOME": str(self.root / f"agent-{node.index}"), **(env or {})}
        log = (self.root / f"ray-start-{node.index}.log").open("ab")
        return subprocess.Popen(self.exec_argv(node, argv), env=full_env, stdout=log, stderr=log)

    def prioritise(self, node: RayNode, nice: int) -> None:
        """Set the scheduling priority of every process of `node` (its autogroup's nice value: the kernel
        shares CPU between sessions first, so a plain nice value does nothing against other sessions)."""
        for pid in node.pids():
            try:
                Path(f"/proc/{pid}/autogroup").write_text(str(nice))
            except OSError:
                continue

    def link(self, node: RayNode, up: bool) -> None:
        """Cut (up=False) or restore the network link of `node`."""
        _ip("-n", node.netns, "link", "set", "eth0", "up" if up else "down")

    def kill_node(self, node: RayNode) -> None:
        """SIGKILL every process in `node`'s namespace (a machine that dies)."""
        for pid in node.pids():
            _kill(pid)

    def teardown(self) -> None:
        """Kill every process in the namespaces (by pid) and delete the namespaces."""
        for _ in range(3):
            for node in self.nodes:
                self.kill_node(node)
            time.sleep(0.2)
        for netns in [n.netns for n in self.nodes] + ([self.bridge] if self.bridge else []):
            _ip("netns", "del", netns, check=False)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def start_cluster(root: Path, nodes: Sequence[tuple[str, str]], *, started: int | None = None) -> RayCluster:
    """A cluster of len(nodes) namespaces, (name, simulated GPUs) each; the first `started` of them (all by
    default) run Ray, the others only have their namespace (start them later with `start_node`). Waits for
    every ray start to return; the caller must call teardown()."""
    tag = f"gpr{os.getpid() % 100000}"
    cluster = RayCluster(tag, root, bridge=f"{tag}b")
    try:
        _ip("netns", "add", cluster.bridge)
        _ip("-n", cluster.bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", cluster.bridge, "link", "set", "br0", "up")
        for index, (name, gpus) in enumerate(nodes, start=1):
            cluster.add_namespace(index, name, gpus)
        count = len(nodes) if started is None else started
        wait_started(cluster, [cluster.start_node(cluster.head)])
        for node in cluster.nodes[1:count]:  # one at a time: parallel starts compete for the two cores
            wait_started(cluster, [cluster.start_node(node)])
    except BaseException:
        cluster.teardown()
        raise
    return cluster


def wait_started(cluster: RayCluster, starts: Sequence[subprocess.Popen[bytes]]) -> None:
    """Wait for `ray start` processes to return; fail with their log when one fails.

    Under load (two cores shared by many test runs) a node's dashboard agent took 30-55 s to write its port
    file, and the raylet gives up after a fixed 15 s: while the nodes start, their processes get a higher
    priority (autogroup nice -15, raised every STARTUP_PRIORITY_S), then go back to the normal one."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while any(p.poll() is None for p in starts) and time.monotonic() < deadline:
        for node in cluster.nodes:
            cluster.prioritise(node, -15)
        time.sleep(STARTUP_PRIORITY_S)
    for node in cluster.nodes:
        cluster.prioritise(node, 0)
    for process in starts:
        try:
            code = process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            code = None
        if code != 0:
            logs = "\n".join(p.read_text(errors="replace")[-3000:]
                             for p in sorted(cluster.root.glob("ray-start-*.log")))
            raise RuntimeError(f"ray start exited {code}:\n{logs}")


CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def inside(netns: str) -> Iterator[None]:
    """Run the calling thread (and the processes it starts) in network namespace `netns`, then go back.
    Tests enter the head node's namespace to reach the server and the cluster on 10.200.0.0/24."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"cannot enter network namespace {netns}")
        try:
            yield
        finally:
            libc.setns(home, CLONE_NEWNET)
    finally:
        os.close(target)
        os.close(home)
