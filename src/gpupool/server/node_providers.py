"""Where the nodes of the pool come from: node providers, and the worker that keeps the store in step.

A provider says which nodes exist now (`nodes()`); each stored node remembers its provider in `source`.
- `LocalHostProvider` ("local"): this machine, as `settings.nodes` nodes (the start-up behaviour of
  `gpupool up`); it never changes while the server runs.
- `SimulatedNodeProvider` ("simulated"): nodes added and removed at run time by whoever holds it (demos,
  tests), each with simulated GPUs; their replicas run on this host through the executor.
- A Ray cluster provider comes with cluster mode.

`NodeSync.step()` registers nodes that joined, and handles nodes that left (not offered, and not kept by
their provider's `keeps`, see `keeps_unoffered`): each live replica on a departed node becomes `lost` (its
workload's lifecycle then retries or ends it), the executor is asked to stop it (in case it still runs), and
the node is removed. A node the executor cannot reach is refused: without Capability.MULTI_NODE every replica
runs on the server's host, so only loopback-addressed nodes are taken.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from sqlalchemy.orm import Session

from gpupool.domain.nodes import Node
from gpupool.domain.replicas import ReplicaState
from gpupool.domain.resources import SharingMode
from gpupool.executors.base import Capability, Executor, Handle
from gpupool.gpu.fake import FakeBackend
from gpupool.server.gpu_runtime import GpuRuntime
from gpupool.server.local_node import BackendFactory, LocalGpus, LocalNode, declared_description, fake_mig, local_nodes
from gpupool.server.services.gpu_admin import restore_mig_layouts
from gpupool.server.services.pool import register_local_nodes, upsert_node
from gpupool.server.settings import Settings
from gpupool.store.db import Database
from gpupool.store.orm import NodeCordonRow, NodeRow
from gpupool.store.repos import nodes as node_repo
from gpupool.store.repos import workloads as repo

log = logging.getLogger("gpupool.nodes")
LOOPBACK_ADDRESSES = ("127.0.0.1", "::1", "localhost")
SIMULATED_LABEL = "gpupool.io/simulated-node"


class NodeProvider(Protocol):
    """A source of nodes. `source` names it in the store; `nodes()` are the nodes present now (no blocking
    beyond discovery; called by the node worker on every pass)."""

    source: str

    def nodes(self) -> list[LocalNode]:
        """The nodes this provider offers now, by name."""
        ...


def keeps_unoffered(provider: NodeProvider, labels: dict[str, str]) -> bool:
    """Whether a stored node of `provider` (with these labels) that the last `nodes()` did not offer still
    exists: a provider may say so with a `keeps(labels)` method (the Ray provider does, for a node whose
    agent did not answer while Ray reports the node alive). Without the method, an unoffered node left."""
    keeps = getattr(provider, "keeps", None)
    return bool(keeps(labels)) if keeps is not None else False


class LocalHostProvider:
    """This machine as `settings.nodes` nodes, with its GPUs (NVML, or declared simulated ones); discovered
    once, since the host does not change while the server runs."""

    source = "local"

    def __init__(self, settings: Settings, nvml_backend: BackendFactory) -> None:
        self._settings = settings
        self._backend = nvml_backend
        self._nodes: list[LocalNode] | None = None

    def nodes(self) -> list[LocalNode]:
        """This host's nodes (discovered on the first call)."""
        if self._nodes is None:
            self._nodes = local_nodes(self._settings, self._backend)
        return list(self._nodes)


def simulated_node(name: str, cpus: int, memory_mib: int, gpus: str = "", address: str = "127.0.0.1",
                   labels: dict[str, str] | None = None) -> LocalNode:
    """A node with `cpus` cores, `memory_mib` MiB and declared simulated GPUs ("2xA100-80GB"; "" for none)."""
    fake = FakeBackend(declared_description(gpus, name) if gpus else {"node": name, "simulated": True, "gpus": []})
    local_gpus = LocalGpus(fake, fake.discover(), "fake", True, SharingMode.SHARED, fake_mig(fake))
    node = Node(name=name, cpu_milli=cpus * 1000, memory_mib=memory_mib, gpus=local_gpus.domain_gpus(),
                labels={SIMULATED_LABEL: "true", **(labels or {})})
    return LocalNode(node, local_gpus, address)


class SimulatedNodeProvider:
    """Nodes added and removed at run time (thread-safe); see `simulated_node`."""

    source = "simulated"

    def __init__(self, nodes: Sequence[LocalNode] = ()) -> None:
        self._lock = threading.Lock()
        self._nodes = {n.node.name: n for n in nodes}

    def add(self, node: LocalNode) -> None:
        """The node joins (replaces a node of the same name)."""
        with self._lock:
            self._nodes[node.node.name] = node

    def remove(self, name: str) -> None:
        """The node leaves (nothing happens for an unknown name)."""
        with self._lock:
            self._nodes.pop(name, None)

    def nodes(self) -> list[LocalNode]:
        """The nodes present now, by name."""
        with self._lock:
            return [self._nodes[name] for name in sorted(self._nodes)]


def _not_answering(row: NodeRow) -> list[str]:
    """A kept node that does not answer takes no new work (its replicas stay): made unschedulable."""
    if not row.schedulable:
        return []
    row.schedulable = False
    return [f"node {row.name} does not answer: no new work is placed on it until it does"]


def _answering_again(session: Session, row: NodeRow) -> list[str]:
    """A node of a provider other than this host's that answers takes work again, unless an administrator
    cordoned it (the only other reason such a node is unschedulable)."""
    if row.schedulable or row.source == LocalHostProvider.source or session.get(NodeCordonRow, row.name):
        return []
    row.schedulable = True
    return [f"node {row.name} answers again: it takes new work"]


class NodeSync:
    """Keeps the stored nodes in step with the providers (see the module docstring); `step()` does one pass."""

    def __init__(self, db: Database, clock: Callable[[], float], providers: Sequence[NodeProvider],
                 runtime: GpuRuntime, executor: Executor, on_change: Callable[[], None] = lambda: None) -> None:
        self.db = db
        self.clock = clock
        self.providers = list(providers)
        self.runtime = runtime
        self.executor = executor
        self.on_change = on_change
        self._started = False

    def reachable(self, node: LocalNode) -> bool:
        """Whether the executor can run replicas on `node`: any node with MULTI_NODE, else loopback ones."""
        return Capability.MULTI_NODE in self.executor.capabilities or node.address in LOOPBACK_ADDRESSES

    def step(self) -> list[str]:
        """One pass over every provider; returns what changed, in words. The first pass registers (and
        updates) every node, as at start-up; later passes handle joins and departures only."""
        changes: list[str] = []
        for provider in self.providers:
            offered = provider.nodes()
            refused = [n for n in offered if not self.reachable(n)]
            changes += [f"node {n.node.name} at {n.address} refused: the {self.executor.name} executor runs "
                        "replicas on this host only (it lacks the multi_node capability)" for n in refused]
            changes += self._sync(provider, [n for n in offered if self.reachable(n)])
        self._started = True
        for change in changes:
            log.info(change)
        if changes:
            self.on_change()
        return changes

    def _sync(self, provider: NodeProvider, declared: list[LocalNode]) -> list[str]:
        source, now = provider.source, self.clock()
        lost: list[Handle] = []
        with self.db.session() as session:
            if not self._started and source == LocalHostProvider.source:
                changes = register_local_nodes(session, declared, now, source)
                joined = declared
            else:
                stored = {row.name: row for row in node_repo.list_nodes(session) if row.source == source}
                wanted = {n.node.name for n in declared}
                joined = [n for n in declared if n.node.name not in stored]
                changes = [f"node {n.node.name} joined" for n in joined if upsert_node(session, n, source, now)]
                for name, row in sorted(stored.items()):
                    if name in wanted:
                        row.heartbeat_at = now
                        changes += _answering_again(session, row)
                        continue
                    if keeps_unoffered(provider, dict(row.labels or {})):
                        changes += _not_answering(row)  # not described this pass, yet it still exists
                        continue
                    lost += self._leave(session, name, now)
                    session.delete(row)
                    changes.append(f"node {name} left the pool")
        # joined nodes, and stored ones this server does not watch yet (registered before a restart)
        for local in [n for n in declared if n in joined or n.node.name not in self.runtime.nodes]:
            self.runtime.add(local)
            changes += restore_mig_layouts(self.db, self.runtime, local.node.name, self.clock)
        for handle in lost:
            self.executor.stop(handle, 0)
        return changes

    def _leave(self, session: Session, node: str, now: float) -> list[Handle]:
        handles = []
        for replica in repo.live_replicas(session):
            if replica.node != node:
                continue
            replica.set_state(ReplicaState.LOST, now, f"node {node} left the pool")
            repo.add_event(session, replica.workload_id, now,
                           f"replica {replica.number} ({replica.role}) lost: node {node} left the pool", replica.number)
            if replica.handle is not None:
                handles.append(dict(replica.handle))
        self.runtime.remove(node)
        return handles
