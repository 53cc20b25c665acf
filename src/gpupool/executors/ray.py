"""The Ray executor (cluster mode): replicas run on the nodes of a Ray cluster, through one node agent each.

Every alive Ray node gets a node agent (`executors/ray_agent.py`): a detached actor named
`gpupool-agent-<Ray node id>` in the namespace `gpupool`, pinned to its node with
NodeAffinitySchedulingStrategy(soft=False), asking Ray for num_cpus=0 and num_gpus=0 (gpupool's scheduler
decides placement; Ray never books anything for it) and restarted by Ray when it crashes (max_restarts=-1).
`start`, `poll`, `stop` and `logs` forward to the agent of the replica's node; the handle names the agent, so
a server that restarts (`kill -9` included) finds its replicas again: detached actors outlive their driver.

A replica's log stays on its node while it runs (read through the agent, `logs -f` included); once the
replica has ended, `poll` copies it to the server's log directory, where `logs` reads it from then on, so a
node lost later loses no finished log.

Only cluster mode imports this module (and Ray): `server/executors.py` imports it lazily.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorDiedError, GetTimeoutError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from gpupool.executors import logfiles
from gpupool.executors.base import (
    Capability,
    Executor,
    ExecutorError,
    Handle,
    NodeGoneError,
    ReplicaLaunch,
    ReplicaState,
    ReplicaStatus,
)
from gpupool.executors.ray_agent import NodeAgent, NodeDescription

log = logging.getLogger("gpupool.ray")
NAMESPACE = "gpupool"
AGENT_PREFIX = "gpupool-agent-"
HANDLE_KIND = "ray"
# A call to an agent answers in milliseconds; 30 s covers an agent that Ray is still starting (its worker
# process imports gpupool: seconds, more on a loaded machine) without hanging a worker pass for long.
CALL_TIMEOUT_S = 30.0
FOLLOW_INTERVAL_S = 0.2  # how often `logs -f` asks the agent for new lines: 5 small calls a second
# Fencing bound: a partitioned node stops its replicas after this long without reaching the head. Ray with
# the health-check settings of docs/cluster.md declares a node dead in ~3 s; twice that leaves no overlap.
DEFAULT_FENCE_AFTER_S = 6.0
AGENT_CONCURRENCY = 16  # parallel calls one agent serves (followers of logs, polls, starts)


def _status(state: str, exit_code: int | None, message: str) -> ReplicaStatus:
    return ReplicaStatus(ReplicaState(state), exit_code, message)


class RayExecutor(Executor):
    """Runs replicas on a Ray cluster through node agents (see the module docstring). `address`: the Ray
    address (host:port of the head's GCS, or "auto" on a node of the cluster). `fence_after_s`: how long an
    agent runs replicas without reaching the head before it stops them."""

    name = "ray"
    capabilities = frozenset({Capability.FOLLOW_LOGS, Capability.REATTACH, Capability.MULTI_NODE})

    def __init__(self, address: str, *, fence_after_s: float = DEFAULT_FENCE_AFTER_S,
                 call_timeout_s: float = CALL_TIMEOUT_S) -> None:
        if not ray.is_initialized():
            try:
                ray.init(address=address, namespace=NAMESPACE, log_to_driver=False,
                         logging_level=logging.WARNING, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise ExecutorError(f"cannot connect to the Ray cluster at {address}: {error}") from None
        self.gcs_address = ray.get_runtime_context().gcs_address
        self.fence_after_s = fence_after_s
        self.call_timeout_s = call_timeout_s
        self._agents: dict[str, Any] = {}  # agent name -> actor handle
        self._lock = threading.Lock()

    # -- agents and nodes ------------------------------------------------------------------------------

    def _agent(self, name: str) -> Any:
        with self._lock:
            agent = self._agents.get(name)
        if agent is None:
            try:
                agent = ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
                raise ExecutorError(f"node agent {name} is gone (its node left the cluster)") from None
            with self._lock:
                self._agents[name] = agent
        return agent

    def _ensure_agent(self, node: dict[str, Any]) -> tuple[str, Any]:
        """The agent of a Ray node (from ray.nodes()), created when it does not exist yet."""
        name = AGENT_PREFIX + str(node["NodeID"])[:16]
        with self._lock:
            known = self._agents.get(name)
        if known is not None:
            return name, known
        resources = node.get("Resources", {})
        actor = ray.remote(NodeAgent).options(
            name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, num_cpus=0, num_gpus=0,
            max_restarts=-1, max_concurrency=AGENT_CONCURRENCY,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
        ).remote(str(node["NodeManagerAddress"]), float(resources.get("CPU", 0)),
                 int(resources.get("memory", 0) // (1024 * 1024)), self.gcs_address, self.fence_after_s)
        with self._lock:
            self._agents[name] = actor
        return name, actor

    def cluster_nodes(self, marker: tuple[str, str] | None = None) -> list[tuple[str, NodeDescription]]:
        """(agent name, description) of every alive node whose agent answers, by node name. Nodes whose
        agent does not answer yet (still starting) are left out of this pass. With `marker` (path, content),
        a node whose agent does not read that content at that path is left out too, and logged: it does not
        see the shared storage."""
        alive = [n for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]
        calls = [(name, agent.describe.remote(), agent.sees.remote(*marker) if marker else None)
                 for name, agent in map(self._ensure_agent, alive)]
        found = []
        for name, ref, sees in calls:
            try:
                description = ray.get(ref, timeout=self.call_timeout_s)
                if sees is not None and not ray.get(sees, timeout=self.call_timeout_s):
                    log.warning("node %s refused: it does not see the shared storage (no marker %s there); mount the "
                                "same shared filesystem at the same path on every node", description.name,
                                marker[0] if marker else "")
                    continue
                found.append((name, description))
            except (RayError, GetTimeoutError) as error:
                log.warning("node agent %s did not answer: %s", name, error)
                with self._lock:
                    self._agents.pop(name, None)
        return sorted(found, key=lambda item: item[1].name)

    @staticmethod
    def node_alive(agent: str) -> bool:
        """Whether Ray counts the node of `agent` (named after its node id) as alive."""
        prefix = agent.removeprefix(AGENT_PREFIX)
        return any(str(n["NodeID"]).startswith(prefix) and n.get("Alive")
                   for n in ray.nodes())  # type: ignore[no-untyped-call]

    def agent_of(self, node: str) -> str:
        """The agent name of the gpupool node `node` (ExecutorError when no alive node has that name)."""
        for name, description in self.cluster_nodes():
            if description.name == node:
                return name
        raise NodeGoneError(f"node {node} is not part of the Ray cluster now")

    def _call(self, agent: str, method: str, *args: Any) -> Any:
        try:
            return ray.get(getattr(self._agent(agent), method).remote(*args), timeout=self.call_timeout_s)
        except ActorDiedError as error:
            with self._lock:
                self._agents.pop(agent, None)
            raise ExecutorError(f"node agent {agent} is gone: {error}") from None
        except (RayError, GetTimeoutError) as error:
            raise ExecutorError(f"node agent {agent} did not answer: {type(error).__name__}") from None

    # -- the Executor interface ------------------------------------------------------------------------

    def free_ports(self, node: str, count: int) -> list[int]:
        """Free ports on `node`, chosen by its agent. Blocks for one call to the agent."""
        return [int(p) for p in self._call(self.agent_of(node), "free_ports", count)]

    def start(self, launch: ReplicaLaunch) -> Handle:
        """Start the replica through the agent of `launch.node` (idempotent per replica attempt, like the
        local executor the agent runs). Blocks for one call; ExecutorError when the node or its agent is gone."""
        agent = self.agent_of(launch.node)
        inner = self._call(agent, "start", launch)
        server_log = str(Path(launch.log_dir) / Path(str(inner["log_path"])).name)
        return {"executor": HANDLE_KIND, "agent": agent, "node": launch.node, "inner": inner,
                "server_log": server_log}

    def poll(self, handle: Handle) -> ReplicaStatus:
        """The replica's status from its agent (one call). LOST when the agent is gone (its node left) or
        for an unknown handle; ExecutorError when the agent does not answer now (the next poll asks again).
        Once the replica has ended, its log is copied to the server first."""
        if handle.get("executor") != HANDLE_KIND:
            return ReplicaStatus(ReplicaState.LOST, message="unknown replica handle")
        agent = str(handle["agent"])
        try:
            status = _status(*self._call(agent, "poll", handle["inner"]))
        except ExecutorError as error:
            if "is gone" in str(error) or not self.node_alive(agent):
                return ReplicaStatus(ReplicaState.LOST, message=f"{error} (node {handle.get('node')} is gone)")
            raise
        if status.state.is_terminal:
            self._copy_log(handle)
        return status

    def _copy_log(self, handle: Handle) -> None:
        target = Path(str(handle["server_log"]))
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        with partial.open("w", encoding="utf-8") as out:
            for text in self._remote_text(handle, follow=False):
                out.write(text)
        os.replace(partial, target)

    def stop(self, handle: Handle, grace_s: float = 10.0) -> None:
        """Ask the agent to stop the replica (returns at once; idempotent). Nothing happens when the agent
        is gone: its node left, and its processes with it (or its agent fences them)."""
        if handle.get("executor") != HANDLE_KIND:
            return
        try:
            self._call(str(handle["agent"]), "stop", handle["inner"], grace_s)
        except ExecutorError as error:
            log.warning("could not stop a replica on node %s: %s", handle.get("node"), error)

    def _remote_chunks(self, handle: Handle, offset: int, follow: bool) -> Iterator[tuple[str, int]]:
        """(whole lines, offset after them) of the replica's log read through its agent from `offset`, until
        the end (with `follow`, until the replica has ended and everything is read)."""
        while True:
            text, offset, ended = self._call(str(handle["agent"]), "read_log", handle["inner"], offset)
            if text:
                yield text, offset
            elif ended or not follow:
                return
            else:
                time.sleep(FOLLOW_INTERVAL_S)

    def _remote_text(self, handle: Handle, follow: bool) -> Iterator[str]:
        for text, _offset in self._remote_chunks(handle, 0, follow):
            yield text

    def logs(self, handle: Handle, tail: int | None = None, follow: bool = False) -> Iterator[str]:
        """Lines of the replica's log: the server's copy once the replica has ended, else read through the
        agent of its node (with `follow`, until it ends). An unknown handle yields nothing; a log that
        cannot be read ends with one line that says why."""
        if handle.get("executor") != HANDLE_KIND:
            return
        copy = Path(str(handle.get("server_log", "")))
        if copy.is_file():
            end = logfiles.file_size(copy)
            start = 0 if tail is None else logfiles.tail_start(copy, tail, end)
            for block in logfiles.read_blocks(copy, start, end):
                yield from block
            return
        start = 0
        try:
            if tail is not None:
                lines: list[str] = []
                for text, start in self._remote_chunks(handle, 0, follow=False):  # noqa: B007  (start: after them)
                    lines = (lines + text.splitlines())[-tail:]
                yield from lines
                if not follow:
                    return
            for text, _end in self._remote_chunks(handle, start, follow):
                yield from text.splitlines()
        except ExecutorError as error:
            yield f"[gpupool] the log cannot be read: {error}"
