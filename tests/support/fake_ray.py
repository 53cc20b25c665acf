"""A fake of the few Ray calls the Ray executor makes, for unit tests without a cluster.

`FakeRay` plays the cluster state (`nodes()`: which nodes exist and whether Ray reports them alive) and the
named agent actors (`remote(...).options(...).remote(...)` with get_if_exists, `get_actor`, and
`get(ref, timeout)`). Each `FakeAgent` answers like a node agent, or, by its `mode`, times out (a busy or
restarting agent: Ray's GetTimeoutError) or has died (ActorDiedError). A ref is evaluated when `get` is
called, so a mode set between the call and the get counts. Errors are Ray's own exception classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

from ray.exceptions import ActorDiedError, GetTimeoutError, RayTaskError

from gpupool.executors.base import ExecutorError
from gpupool.executors.ray_agent import NodeDescription, discover_gpus, sample_on_node
from gpupool.gpu.fake import FakeBackend
from gpupool.gpu.types import GpuBackend, NodeSample
from gpupool.server.local_node import declared_description

ANSWER, TIMEOUT, DEAD = "answer", "timeout", "dead"


@dataclass
class FakeRef:
    """An object ref: what the call will answer, evaluated by `FakeRay.get`."""

    agent: FakeAgent
    name: str
    answer: Callable[[], Any]


class _Method:
    def __init__(self, agent: FakeAgent, method: Callable[..., Any]) -> None:
        self._agent, self._method = agent, method

    def remote(self, *args: Any) -> FakeRef:
        self._agent.calls.append(self._method.__name__)
        return FakeRef(self._agent, self._method.__name__, lambda: self._method(*args))


@dataclass
class FakeAgent:
    """A named agent actor of node `node_id`; `mode` says how its calls end (ANSWER, TIMEOUT, DEAD)."""

    name: str
    node_id: str
    description: NodeDescription
    mode: str = ANSWER
    states: dict[str, tuple[str, int | None, str]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    sees_storage: bool = True  # whether the node reads the server's shared-storage marker
    utilization_pct: float | None = None  # what the node's GPUs report when sampled (None: the declared figures)
    released: list[tuple[str, int, int]] = field(default_factory=list)  # release_unstarted calls
    backend: GpuBackend | None = None  # discovered GPUs (a description file), sampled as the real agent does
    launches: list[Any] = field(default_factory=list)  # every ReplicaLaunch started here
    session_ids: dict[str, int] = field(default_factory=dict)  # replica id -> session id its processes have
    warm_environments: list[str] = field(default_factory=list)  # what the server last sent with describe

    def __getattr__(self, method: str) -> _Method:
        return _Method(self, getattr(self, "_" + method))

    def _describe(self, warm_environments: list[str] | None = None) -> NodeDescription:
        if warm_environments is not None:
            self.warm_environments = list(warm_environments)
        return self.description

    def _sees(self, path: str, content: str) -> bool:
        return self.sees_storage

    def _start(self, launch: Any) -> dict[str, Any]:
        self.launches.append(launch)
        replica_id = f"{launch.workload_id}-{launch.replica}-{launch.attempt}"
        self.states.setdefault(replica_id, ("running", None, ""))
        return {
            "id": replica_id,
            "workload_id": launch.workload_id,
            "replica": launch.replica,
            "attempt": launch.attempt,
            "log_path": f"/nonexistent/{replica_id}.log",
        }  # a local handle's keys

    def _session_id(self, inner: dict[str, Any]) -> int | None:
        return self.session_ids.get(str(inner["id"]))

    def _sample_gpus(self, now: float) -> NodeSample:
        """The node's declared GPUs sampled on the node, as the real agent does, with `utilization_pct`."""
        if self.backend is not None:
            return sample_on_node(self.backend, now)
        if not self.description.gpus:
            return NodeSample(now)
        sample = FakeBackend(declared_description(self.description.gpus, self.description.name)).sample(now)
        if self.utilization_pct is None:
            return sample
        return replace(sample, gpus=tuple(replace(g, utilization_pct=self.utilization_pct) for g in sample.gpus))

    def _poll(self, inner: dict[str, Any]) -> tuple[str, int | None, str]:
        return self.states.get(str(inner["id"]), ("running", None, ""))

    def _free_ports(self, count: int) -> list[int]:
        if count < 0:
            raise ExecutorError(f"cannot choose {count} ports")
        return list(range(40000, 40000 + count))

    def _stop(self, inner: dict[str, Any], grace_s: float) -> None:
        self.states[str(inner["id"])] = ("cancelled", None, "stopped")

    def _release_unstarted(self, workload_id: str, replica: int, attempt: int, grace_s: float) -> None:
        self.released.append((workload_id, replica, attempt))


class FakeRay:
    """The cluster: nodes by id (each with the gpupool name its agent declares) and named agents."""

    def __init__(self) -> None:
        self.node_states: dict[str, dict[str, Any]] = {}
        self.names: dict[str, str] = {}  # node id -> gpupool node name its agents declare
        self.gpus: dict[str, str] = {}  # node id -> the simulated GPUs its agents declare
        self.descriptions: dict[str, str] = {}  # node id -> the GPU description file its agents discover
        self.actors: dict[str, FakeAgent] = {}  # agent name -> live actor
        self.created: list[str] = []  # agent names, one entry per actor created
        self.lookups: list[str] = []  # agent names looked up with get_actor
        self.starting: set[str] = set()  # node ids whose new agents are still starting (their calls time out)
        self.waits: list[tuple[str, float | None]] = []  # (method, timeout) of every get, in order

    # -- what tests steer ---------------------------------------------------------------------------

    def add_node(self, node_id: str, name: str, gpus: str = "", gpu_description: str = "") -> None:
        """Ray reports a new alive node `node_id`; its agent will declare the gpupool name `name` and the
        simulated GPUs `gpus` (e.g. "1xA100-80GB"), or discover GPUs from the fake NVML description file
        `gpu_description` with the real agent's code (GPUPOOL_AGENT_GPU_DESCRIPTION)."""
        self.descriptions[node_id] = gpu_description
        self.node_states[node_id] = {
            "NodeID": node_id,
            "Alive": True,
            "NodeManagerAddress": f"10.0.0.{len(self.names) + 1}",
            "Resources": {"CPU": 2.0, "memory": 4 * 1024**3},
        }
        self.names[node_id] = name
        self.gpus[node_id] = gpus

    def declare_dead(self, node_id: str) -> None:
        """Ray's health check declared the node dead; its agent dies with it."""
        self.node_states[node_id]["Alive"] = False
        for agent in [a for a in self.actors.values() if a.node_id == node_id]:
            agent.mode = DEAD
            del self.actors[agent.name]

    def kill_agent(self, name: str) -> None:
        """`ray.kill` of the agent (no restart): calls on old handles fail, the name is free again."""
        self.actors.pop(name).mode = DEAD

    def agent_on(self, node_id: str) -> FakeAgent:
        return next(a for a in self.actors.values() if a.node_id == node_id)

    # -- the Ray API the executor uses ------------------------------------------------------------------

    def is_initialized(self) -> bool:
        return True

    def get_runtime_context(self) -> SimpleNamespace:
        return SimpleNamespace(gcs_address="10.0.0.1:6379")

    def nodes(self) -> list[dict[str, Any]]:
        return [dict(state) for state in self.node_states.values()]

    def remote(self, cls: type) -> SimpleNamespace:
        def options(**kwargs: Any) -> SimpleNamespace:
            def create(address: str, cpus: float, memory_mib: int, *_: Any) -> FakeAgent:
                name = kwargs["name"]
                assert kwargs.get("get_if_exists") and kwargs.get("lifetime") == "detached"
                if name not in self.actors:
                    node_id = kwargs["scheduling_strategy"].node_id
                    description = NodeDescription(
                        self.names[node_id], address, cpus, memory_mib, self.gpus[node_id], {}
                    )
                    backend = None
                    if self.descriptions.get(node_id):
                        environ = {"GPUPOOL_AGENT_GPU_DESCRIPTION": self.descriptions[node_id]}
                        backend = discover_gpus(environ, self.names[node_id])
                        description = replace(
                            description,
                            gpu_inventory=backend.discover().to_dict(),
                            gpus_simulated=bool(getattr(backend, "simulated", False)),
                        )
                    self.actors[name] = FakeAgent(name, node_id, description, backend=backend)
                    self.created.append(name)
                return self.actors[name]

            return SimpleNamespace(remote=create)

        return SimpleNamespace(options=options)

    def get_actor(self, name: str, namespace: str = "") -> FakeAgent:
        self.lookups.append(name)
        if name not in self.actors:
            raise ValueError(f"Failed to look up actor with name '{name}'")
        return self.actors[name]

    def get(self, ref: FakeRef, timeout: float | None = None) -> Any:
        self.waits.append((ref.name, timeout))
        if ref.agent.mode == TIMEOUT or (ref.agent.node_id in self.starting and ref.agent.mode == ANSWER):
            raise GetTimeoutError("Get timed out: some object(s) not ready.")
        if ref.agent.mode == DEAD:
            raise ActorDiedError()
        try:
            return ref.answer()
        except Exception as error:  # raised inside the actor: Ray hands it back wrapped, as the cause
            raise RayTaskError(
                ref.name, f"Traceback (most recent call last):\n{error!r}", error
            ).as_instanceof_cause() from None
