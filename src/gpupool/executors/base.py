"""The Executor interface: how the server starts, watches, stops and reads the logs of replicas.

An executor runs replicas somewhere (local processes, a Ray cluster, a fake for tests). The server stores
the opaque `handle` that `start` returns (a JSON-serialisable dict) and passes it back to the other methods,
so an executor can find its replicas again after the server restarts. Optional features are declared in
`capabilities`, never probed with hasattr.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from gpupool.domain.replicas import ReplicaState

Handle = dict[str, Any]
__all__ = ["Capability", "Endpoint", "Executor", "ExecutorError", "Handle", "ReplicaLaunch", "ReplicaState",
           "ReplicaStatus"]
LOG_CHUNK_LINES = 1000  # ~100 KB of typical log lines per write: few writes, small memory


class Capability(StrEnum):
    """Optional executor features."""

    FOLLOW_LOGS = "follow_logs"  # logs(follow=True) streams until the replica ends
    REATTACH = "reattach"  # replicas keep running across a server restart and are found again
    MULTI_NODE = "multi_node"  # replicas may run on several hosts
    READ_ONLY_PATHS = "read_only_paths"  # ReplicaLaunch.read_only_paths is enforced by the kernel
    SESSION_IDS = "session_ids"  # session_id(handle) names the replica's processes on this machine


@dataclass(frozen=True, slots=True)
class RunAs:
    """The OS identity a replica runs as (multi-user pools): user name, uid, primary gid (the project's
    group), supplementary groups, and the HOME it gets."""

    user: str
    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    home: str = "/"


@dataclass(frozen=True, slots=True)
class ReplicaLaunch:
    """Everything needed to start one replica.

    `command` runs under `bash -c` (or the executor's equivalent) in `cwd` with exactly `env` added to a
    minimal base environment; stdout and stderr go to files under `log_dir`. `node` is the node the
    scheduler chose; `gpu_indices` the node-local GPU indices it was given (for information; the GPU
    environment itself is already in `env`).

    `ports` maps each port the spec names to the free port chosen for it on the node (`free_ports`); the
    replica gets them as GPUPOOL_PORT_<name> in `env` and listens there (`endpoints` says where to reach it).

    `attempt` counts runs of the same replica (0 first, then 1, 2, ... for retries and requeues after
    preemption): start is idempotent per (workload_id, replica, attempt), so a new attempt starts a new
    process. `read_only_paths` are directories the replica may read but not write (the shared storage scope
    of a non-admin); an executor with the READ_ONLY_PATHS capability enforces it, others only pass it on.
    `run_as`: the OS identity the command must run as (None: the executor's own); an executor that cannot
    switch identity refuses such a launch with ExecutorError. `notebook`: the replica is a notebook's
    JupyterLab (`command` is `gpupool.domain.notebooks.JUPYTER_COMMAND`), which an executor with a warm pool may
    run in a pre-started interpreter instead, with the same arguments, environment, directory and identity.
    """

    workload_id: str
    replica: int
    role: str
    command: str
    env: Mapping[str, str]
    cwd: Path
    log_dir: Path
    node: str = "local"
    gpu_indices: tuple[int, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    attempt: int = 0
    read_only_paths: tuple[Path, ...] = ()
    run_as: RunAs | None = None
    ports: Mapping[int, int] = field(default_factory=dict)  # port named in the spec -> port chosen on the node
    node_address: str = "127.0.0.1"  # the node's registered network address
    notebook: bool = False  # a notebook's JupyterLab: an executor with a warm pool may start it in a parked slot


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the server reaches a port of a replica."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """A replica's state, its exit code once ended, and a human message. `node_gone`: the replica is LOST
    because its node left the pool (the reconciler then places no new work on that node)."""

    state: ReplicaState
    exit_code: int | None = None
    message: str = ""
    node_gone: bool = False


class Executor(ABC):
    """Starts, polls, stops and reads the logs of replicas; see each method for blocking and idempotency."""

    name: str = "executor"
    capabilities: frozenset[Capability] = frozenset()

    @abstractmethod
    def start(self, launch: ReplicaLaunch) -> Handle:
        """Start the replica and return its handle without waiting for it to run. Idempotent per
        (workload_id, replica, attempt): starting a replica that this executor already started returns the same
        handle and starts nothing new. Raises ExecutorError when it cannot start at all."""

    @abstractmethod
    def poll(self, handle: Handle) -> ReplicaStatus:
        """The replica's current status, without blocking. An unknown or vanished replica is LOST."""

    @abstractmethod
    def stop(self, handle: Handle, grace_s: float = 10.0) -> None:
        """Ask the replica to stop (SIGTERM to its whole process group or equivalent) and make sure it is
        gone `grace_s` later (SIGKILL). Returns without waiting for the grace period. Idempotent; stopping
        an unknown or finished replica does nothing."""

    @abstractmethod
    def logs(self, handle: Handle, tail: int | None = None, follow: bool = False) -> Iterator[str]:
        """Lines of the replica's combined output (the last `tail` lines when given). With `follow` (only
        when FOLLOW_LOGS is a capability) the iterator blocks for new lines until the replica ends.
        An unknown replica yields nothing."""

    def free_ports(self, node: str, count: int) -> list[int]:
        """`count` distinct TCP ports free now on `node` (rendezvous ports on the node of rank 0, the ports a
        spec names on each replica's node). Blocks briefly; not idempotent (each call may give other ports).
        The default raises ExecutorError: an executor that can choose ports overrides it."""
        raise ExecutorError(f"the {self.name} executor cannot choose ports on node {node}")

    def endpoints(self, launch: ReplicaLaunch) -> dict[int, Endpoint]:
        """Where the replica started from `launch` can be reached, per port its spec names. Pure (no I/O).
        The default: the node's address and the chosen port; an executor whose replicas are reached another
        way (loopback, a tunnel) overrides it."""
        return {name: Endpoint(launch.node_address, port) for name, port in sorted(launch.ports.items())}

    def log_text(self, handle: Handle, tail: int | None = None, follow: bool = False) -> Iterator[str]:
        """The same output as `logs`, as text chunks of whole lines, each line ending with a newline (fewer,
        larger writes for a response). Blocks like `logs`. The default joins the lines of `logs` in chunks
        of up to LOG_CHUNK_LINES when not following, and passes them one by one when following."""
        batch: list[str] = []
        for line in self.logs(handle, tail=tail, follow=follow):
            batch.append(line)
            if follow or len(batch) >= LOG_CHUNK_LINES:
                yield "\n".join(batch) + "\n"
                batch = []
        if batch:
            yield "\n".join(batch) + "\n"

    async def log_stream(self, handle: Handle, tail: int | None = None, follow: bool = False) -> AsyncIterator[str]:
        """`log_text` for an event loop. The default runs `log_text` in a worker thread (one per stream
        while it follows); executors that can wait without a thread override it."""
        iterator = self.log_text(handle, tail=tail, follow=follow)
        end = object()
        while (chunk := await asyncio.to_thread(next, iterator, end)) is not end:
            yield str(chunk)

    def session_id(self, handle: Handle) -> int | None:
        """The session id every process of the replica shares on this machine (the GPU monitor maps the
        pids NVML reports to replicas with it), or None when it is not known: the replica has not started
        its command yet, has ended, or runs elsewhere. Never blocks. Only executors with the SESSION_IDS
        capability return anything; the default returns None."""
        return None

    def release_unstarted(self, workload_id: str, replica: int, attempt: int,  # noqa: B027
                          grace_s: float = 10.0, node: str = "") -> None:
        """The replica is being stopped and no handle of it was ever recorded: a start of it may have begun and
        died midway (the server was killed). Release what such a start left behind, at once (a process it
        spawned is stopped as `stop` does, with `grace_s`; a resource it claimed is given back) on `node`, the
        node it was placed on; nothing when no start of it ever began.
        Idempotent; never blocks long. The default does nothing (an executor whose starts leave nothing)."""

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release executor resources (threads, connections); replicas keep running. Idempotent."""


class ExecutorError(Exception):
    """An executor could not do what was asked (the message says what and why)."""


class NodeGoneError(ExecutorError):
    """The replica's node has left the pool, so nothing was started there: the work should be placed again,
    not counted as a failure of the workload."""
