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

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from gpupool.executors import logfiles, ray_fence
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
from gpupool.executors.ray_health import AgentHealth, short_cause
from gpupool.gpu.types import NodeSample

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
# How long an agent may not answer while Ray reports its node alive before the node is treated as lost: the
# server's default (settings.agent_silence_limit_s, where the choice is explained)
DEFAULT_SILENCE_LIMIT_S = 60.0
FENCE_ORDERS_DIR = ".gpupool-fence-orders"  # under the shared storage root: stop orders for the watchdogs
AGENT_CONCURRENCY = 16  # parallel calls one agent serves (followers of logs, polls, starts)
# One node pass waits this long in all for the agents' descriptions: an agent answers in milliseconds, 5 s
# allows a loaded machine, and bounds how long a silent agent delays the pass (and the handling of a dead
# node). An agent still starting just joins on a later pass.
SURVEY_TIMEOUT_S = 5.0
# Ray's core worker kills its child processes when it exits (ray.kill included); the agent's replica
# supervisors are its children and must outlive it (a new agent re-attaches to them), so the agent's worker
# runs without that clean-up.
AGENT_RUNTIME_ENV = {"env_vars": {"RAY_kill_child_processes_on_worker_exit": "0"}}


@dataclasses.dataclass(frozen=True)
class ClusterSurvey:
    """One pass over the alive nodes of the Ray cluster: (agent, description) of the nodes whose agents
    answered, by node name, and the agents of alive nodes that did not answer in time."""

    answered: list[tuple[str, NodeDescription]]
    silent: frozenset[str]


def _status(state: str, exit_code: int | None, message: str) -> ReplicaStatus:
    return ReplicaStatus(ReplicaState(state), exit_code, message)


class RayExecutor(Executor):
    """Runs replicas on a Ray cluster through node agents (see the module docstring). `address`: the Ray
    address (host:port of the head's GCS, or "auto" on a node of the cluster). `fence_after_s`: how long an
    agent runs replicas without reaching the head before it stops them. `silence_limit_s`: how long an agent
    may not answer, its node alive, before the node counts as lost (`overdue`). `fence_orders_dir`: a folder
    on the shared storage where a stop the agent cannot take is left for the node's fencing watchdog
    (`executors/ray_fence.py`). `warm_environments`: the Pythons (`<build>/bin/python` on the shared
    filesystem) of the environments whose notebooks get warm slots on nodes that keep a warm pool, asked at each
    node pass and sent to every agent with it. `clock`: the monotonic clock of the agents' silences (tests)."""

    name = "ray"
    capabilities = frozenset({Capability.FOLLOW_LOGS, Capability.REATTACH, Capability.MULTI_NODE,
                              Capability.SESSION_IDS})

    def __init__(
        self,
        address: str,
        *,
        fence_after_s: float = DEFAULT_FENCE_AFTER_S,
        call_timeout_s: float = CALL_TIMEOUT_S,
        survey_timeout_s: float = SURVEY_TIMEOUT_S,
        silence_limit_s: float = DEFAULT_SILENCE_LIMIT_S,
        fence_orders_dir: Path | None = None,
        warm_environments: Callable[[], Sequence[str]] = tuple,
        clock: Callable[[], float] = time.monotonic,
        api: Any = None,
    ) -> None:
        self.ray = ray if api is None else api  # `api`: an object with Ray's calls (tests pass a fake)
        if not self.ray.is_initialized():
            try:
                self.ray.init(
                    address=address,
                    namespace=NAMESPACE,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                    configure_logging=False,
                )
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise ExecutorError(f"cannot connect to the Ray cluster at {address}: {error}") from None
        self.gcs_address = self.ray.get_runtime_context().gcs_address
        self.fence_after_s = fence_after_s
        self.call_timeout_s = call_timeout_s
        self.survey_timeout_s = survey_timeout_s
        self.silence_limit_s = silence_limit_s
        self.fence_orders_dir = fence_orders_dir
        self.warm_environments = warm_environments
        self.health = AgentHealth(clock)
        self._agents: dict[str, Any] = {}  # agent name -> actor handle, while calls to it succeed
        self._names: dict[str, str] = {}  # agent name -> the gpupool name of its node (from its description)
        self._refused: set[str] = set()  # agents whose nodes do not see the shared storage (logged once)
        self._lock = threading.Lock()

    # -- agents and nodes ------------------------------------------------------------------------------

    def _node_name(self, agent: str) -> str | None:
        """The gpupool name of `agent`'s node, once it has described it."""
        with self._lock:
            return self._names.get(agent)

    def _forget_handle(self, agent: str) -> None:
        """Drop the cached handle of `agent` (a call failed with an actor error): the next call looks the
        agent up again by name, and finds it restarted, or recreated by the next node pass."""
        with self._lock:
            self._agents.pop(agent, None)

    def _agent(self, name: str) -> Any:
        """The handle of agent `name`: cached, else looked up by name (ExecutorError when none exists now)."""
        with self._lock:
            agent = self._agents.get(name)
        if agent is None:
            try:
                agent = self.ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
                if self.node_alive(name):  # else its node left: no silence
                    self.health.failed(name, self._node_name(name), "no agent of that name (being created again)")
                raise ExecutorError(
                    f"node agent {name} does not exist now (its node left the cluster, or the "
                    "agent is being created again)"
                ) from None
            with self._lock:
                self._agents[name] = agent
        return agent

    def _ensure_agent(self, node: dict[str, Any]) -> tuple[str, Any]:
        """The agent of a Ray node (from ray.nodes()): its cached handle, else the agent of that name (Ray's
        get_if_exists), created when it does not exist (a new node, or an agent that was killed)."""
        name = AGENT_PREFIX + str(node["NodeID"])[:16]
        with self._lock:
            known = self._agents.get(name)
        if known is not None:
            return name, known
        resources = node.get("Resources", {})
        actor = (
            self.ray.remote(NodeAgent)
            .options(
                name=name,
                namespace=NAMESPACE,
                lifetime="detached",
                get_if_exists=True,
                num_cpus=0,
                num_gpus=0,
                max_restarts=-1,
                max_concurrency=AGENT_CONCURRENCY,
                runtime_env=AGENT_RUNTIME_ENV,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
            )
            .remote(
                str(node["NodeManagerAddress"]),
                float(resources.get("CPU", 0)),
                int(resources.get("memory", 0) // (1024 * 1024)),
                self.gcs_address,
                self.fence_after_s,
                str(self.fence_orders_dir or ""),
            )
        )
        with self._lock:
            self._agents[name] = actor
        return name, actor

    def _alive_nodes(self) -> list[dict[str, Any]]:
        return [n for n in self.ray.nodes() if n.get("Alive")]

    def survey(self, marker: tuple[str, str] | None = None, timeout_s: float | None = None) -> ClusterSurvey:
        """Ask the agent of every alive Ray node to describe its node (agents are created for new nodes),
        waiting at most `timeout_s` (default `survey_timeout_s`) in all. Agents that answer are `answered`,
        by node name; those that do not (still starting, restarting, busy) are `silent`: their nodes are
        alive, which is not the same as gone. With `marker` (path, content), a node whose agent does not read
        that content at that path is left out, and logged: it does not see the shared storage. Each agent is
        told the environments whose notebooks get warm slots (`warm_environments`) with the same call."""
        asked_at, alive = self.health.now(), self._alive_nodes()
        warm = list(self.warm_environments())
        calls = [
            (name, agent.describe.remote(warm), agent.sees.remote(*marker) if marker else None)
            for name, agent in (self._ensure_agent(n) for n in alive)
        ]
        wait_s = self.survey_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + wait_s
        answered: list[tuple[str, NodeDescription]] = []
        silent: set[str] = set()
        for name, ref, sees in calls:
            try:
                description = self.ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
                seen = sees is None or self.ray.get(sees, timeout=max(0.0, deadline - time.monotonic()))
            except RayError as error:
                self._no_answer(name, error, wait_s)
                silent.add(name)
                continue
            with self._lock:
                self._names[name] = description.name
            self.health.answered(name, description.name, asked_at)
            if seen:
                answered.append((name, description))
                self._refused.discard(name)
            elif name not in self._refused:  # logged once, not on every pass
                self._refused.add(name)
                log.warning(
                    "node %s refused: it does not see the shared storage (no marker %s there); mount the "
                    "same shared filesystem at the same path on every node",
                    description.name,
                    marker[0] if marker else "",
                )
        self._drop_departed({name for name, _, _ in calls})
        return ClusterSurvey(sorted(answered, key=lambda item: item[1].name), frozenset(silent))

    def _no_answer(self, agent: str, error: RayError, timeout_s: float) -> None:
        """Record that `agent` did not answer: its handle is dropped after an actor error (a timeout keeps
        it: the actor is the same, only slow), and its episode of silence is logged once. An actor error on a
        node Ray no longer reports alive is no silence: the node left (the node worker says so)."""
        cause = f"no answer within {timeout_s:g} s" if isinstance(error, GetTimeoutError) else short_cause(error)
        if isinstance(error, RayActorError):
            self._forget_handle(agent)
            if not self.node_alive(agent):
                log.debug("node agent %s is gone with its node: %s", agent, cause)
                return
        self.health.failed(agent, self._node_name(agent), cause)

    def _drop_departed(self, alive_agents: set[str]) -> None:
        """Forget the handles, names and silences of agents whose nodes Ray no longer reports alive."""
        with self._lock:
            departed = (set(self._agents) | set(self._names)) - alive_agents
            for agent in departed:
                self._agents.pop(agent, None)
                self._names.pop(agent, None)
        for agent in departed:
            self.health.forget(agent)

    def cluster_nodes(self, marker: tuple[str, str] | None = None) -> list[tuple[str, NodeDescription]]:
        """(agent name, description) of every alive node whose agent answers, by node name (see `survey`)."""
        return self.survey(marker).answered

    def node_alive(self, agent: str) -> bool:
        """Whether Ray counts the node of `agent` (named after its node id) as alive."""
        prefix = agent.removeprefix(AGENT_PREFIX)
        return any(str(n["NodeID"]).startswith(prefix) for n in self._alive_nodes())

    def overdue(self, agent: str) -> float | None:
        """How long `agent` has not answered, once that is `silence_limit_s` or more (its node then counts
        as lost though Ray reports it alive); None while it answers or is within the limit."""
        silent_for = self.health.silent_for(agent)
        return silent_for if silent_for is not None and silent_for >= self.silence_limit_s else None

    def agent_of(self, node: str) -> str:
        """The agent name of the gpupool node `node`: the agent that last described a node of that name,
        while Ray reports its node alive, else found by a survey (NodeGoneError when no alive node has that
        name)."""
        with self._lock:
            candidates = [agent for agent, name in self._names.items() if name == node]
        alive = {str(n["NodeID"]) for n in self._alive_nodes()}
        for agent in candidates:
            if any(node_id.startswith(agent.removeprefix(AGENT_PREFIX)) for node_id in alive):
                return agent
        for name, description in self.cluster_nodes():
            if description.name == node:
                return name
        raise NodeGoneError(f"node {node} is not part of the Ray cluster now")

    def _call(self, agent: str, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        """Call `method` of `agent` and wait for its answer (at most `timeout_s`, default call_timeout_s).
        ExecutorError when the agent does not answer (logged once per episode) or the method failed there
        (with its message)."""
        asked_at, wait_s = self.health.now(), self.call_timeout_s if timeout_s is None else timeout_s
        try:
            result = self.ray.get(getattr(self._agent(agent), method).remote(*args), timeout=wait_s)
        except RayTaskError as error:  # the agent answered: the method itself raised
            cause = error.cause if isinstance(error.cause, Exception) else error
            raise ExecutorError(f"node {self._node_name(agent) or agent}: {short_cause(cause)}") from None
        except RayError as error:
            self._no_answer(agent, error, wait_s)
            raise ExecutorError(f"node agent {agent} did not answer: {short_cause(error)}") from None
        self.health.answered(agent, self._node_name(agent) or agent, asked_at)
        return result

    # -- the Executor interface ------------------------------------------------------------------------

    def sample_gpus(self, agent: str, now: float) -> NodeSample:
        """One reading of the GPUs of `agent`'s node, taken there by the agent (one call). ExecutorError when
        the agent does not answer (within survey_timeout_s: the GPU sampler visits the nodes one by one, and
        a silent agent must not hold up the others for a whole call's bound); no call is made while it is
        known not to answer (the sampler then skips the node without waiting)."""
        silence = self.health.silence(agent)
        if silence is not None:
            raise ExecutorError(f"node agent {agent} does not answer now ({silence.cause})")
        sample: NodeSample = self._call(agent, "sample_gpus", now, timeout_s=self.survey_timeout_s)
        return sample

    def session_id(self, handle: Handle) -> int | None:
        """The session id of the replica's processes on its node, from its agent (one call bounded by
        survey_timeout_s; the GPU sampler asks once per replica and keeps it): the GPU processes the agent
        samples there carry their sessions, so the sampler attributes them by it. None while the command has
        not started or has ended, for another executor's handle, and while the agent does not answer."""
        if handle.get("executor") != HANDLE_KIND:
            return None
        agent = str(handle["agent"])
        if self.health.silence(agent) is not None:
            return None
        try:
            found = self._call(agent, "session_id", handle["inner"], timeout_s=self.survey_timeout_s)
        except ExecutorError as error:
            log.debug("the session of a replica on node %s is not known yet: %s", handle.get("node"), error)
            return None
        return int(found) if found is not None else None

    def free_ports(self, node: str, count: int) -> list[int]:
        """Free ports on `node`, chosen by its agent. Blocks for one call to the agent."""
        return [int(p) for p in self._call(self.agent_of(node), "free_ports", count)]

    def start(self, launch: ReplicaLaunch) -> Handle:
        """Start the replica through the agent of `launch.node` (idempotent per replica attempt, like the
        local executor the agent runs). Blocks for one call; ExecutorError when the call fails. NodeGoneError
        (nothing started, the work is placed again) when the node is gone, or when its agent is known not to
        answer now: no call is made then, so a silent agent neither holds up the launch nor fails the work."""
        agent = self.agent_of(launch.node)
        silence = self.health.silence(agent)
        if silence is not None:
            raise NodeGoneError(f"node {launch.node} does not answer now ({silence.cause}); nothing was started")
        inner = self._call(agent, "start", launch)
        server_log = str(Path(launch.log_dir) / Path(str(inner["log_path"])).name)
        return {"executor": HANDLE_KIND, "agent": agent, "node": launch.node, "inner": inner, "server_log": server_log}

    def poll(self, handle: Handle) -> ReplicaStatus:
        """The replica's status from its agent (one call). LOST when Ray no longer reports the replica's
        node alive, or for an unknown handle. While the node is alive, an agent that does not answer (killed
        and being created again, restarting, busy) raises ExecutorError: the replica is not lost, the next
        poll asks again. Once the replica has ended, its log is copied to the server first."""
        if handle.get("executor") != HANDLE_KIND:
            return ReplicaStatus(ReplicaState.LOST, message="unknown replica handle")
        agent = str(handle["agent"])
        try:
            status = _status(*self._call(agent, "poll", handle["inner"]))
        except ExecutorError:
            if not self.node_alive(agent):
                # the node worker's words for the same event, whichever of the two notices it first
                gone = f"node {handle.get('node')} left the pool (Ray no longer reports it alive)"
                return ReplicaStatus(ReplicaState.LOST, message=gone, node_gone=True)
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
        is gone: its node left, and its processes with it (or its agent fences them). When the agent is
        known not to answer now (no call is made then, so a silent agent does not hold up the caller), or
        does not take the stop, while Ray reports its node alive, the stop is left as an order for the node's
        fencing watchdog (with `fence_orders_dir`)."""
        if handle.get("executor") != HANDLE_KIND:
            return
        agent = str(handle["agent"])
        if self.health.silence(agent) is not None:
            log.debug("node %s does not answer now: the stop of a replica is left as an order", handle.get("node"))
            if self.fence_orders_dir is not None and self.node_alive(agent):
                self._leave_stop_order(handle, grace_s)
            return
        try:
            self._call(agent, "stop", handle["inner"], grace_s)
        except ExecutorError as error:  # a silent agent is logged once per episode; the stop is sent again
            quiet = self.health.silence(agent) is not None
            (log.debug if quiet else log.warning)("could not stop a replica on node %s: %s", handle.get("node"), error)
            if self.fence_orders_dir is not None and self.node_alive(agent):
                self._leave_stop_order(handle, grace_s)

    def _leave_stop_order(self, handle: Handle, grace_s: float) -> None:
        """The agent of an alive node did not take a stop: leave it as an order for the node's watchdog."""
        assert self.fence_orders_dir is not None
        try:
            ray_fence.write_order(self.fence_orders_dir, str(handle.get("node")), dict(handle["inner"]), grace_s)
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("could not leave a stop order for node %s: %s", handle.get("node"), error)

    def release_unstarted(self, workload_id: str, replica: int, attempt: int, grace_s: float = 10.0,
                          node: str = "") -> None:
        """Have the agent of `node` release what a start of the replica that died before its handle was recorded
        left there (its local executor's `release_unstarted`). Nothing when the node is gone (what ran there
        went with it); ExecutorError when its agent does not answer (no call is made to an agent known to be
        silent: the reconciler is not held up, and a claimed slot is reaped on the node later)."""
        try:
            agent = self.agent_of(node)
        except NodeGoneError:
            return
        silence = self.health.silence(agent)
        if silence is not None:
            raise ExecutorError(f"node {node} does not answer now ({silence.cause})")
        self._call(agent, "release_unstarted", workload_id, replica, attempt, grace_s)

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
