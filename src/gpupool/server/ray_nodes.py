"""The Ray node provider of cluster mode: the nodes of a Ray cluster, as their agents describe them.

Imported only in cluster mode (it imports Ray through `executors/ray.py`). Each alive Ray node whose agent
answers is a node of the pool, named by its agent (GPUPOOL_AGENT_NODE_NAME on that node, else its host name)
and reached at its Ray address; a node that joins the cluster appears on the next pass of the node worker,
one that Ray declares dead is gone from the list, so the node worker takes its replicas to `lost`. A node
whose agent stops answering (restarted, killed and created again, busy) stays while Ray reports it alive,
for at most the executor's silence limit: after that it is treated as lost like a dead node (its replicas
`lost` and retried elsewhere, their stops left as orders for the node's fencing watchdog), and it joins
again, as a new node, once its agent answers.
"""

from __future__ import annotations

import logging
import os
import secrets
from contextlib import AbstractContextManager
from pathlib import Path

from gpupool.domain.errors import ConflictError
from gpupool.domain.nodes import Node
from gpupool.domain.resources import SharingMode
from gpupool.executors.ray import RayExecutor
from gpupool.executors.ray_agent import NodeDescription
from gpupool.gpu.fake import FakeBackend
from gpupool.gpu.mig import MigNvml
from gpupool.gpu.types import GpuInventory, NodeSample
from gpupool.server.local_node import (
    CLUSTER_NODE_REFUSAL,
    LocalGpus,
    LocalNode,
    MigAccess,
    declared_description,
    fake_mig,
)

log = logging.getLogger("gpupool.nodes")
RAY_NODE_LABEL = "gpupool.io/ray-agent"  # the agent of the node, for operators reading `gpupool nodes --json`


class AgentSampledGpus:
    """The GPU backend of a Ray node on the server: the cards are those the node's agent reported (`cards`:
    the declared simulated ones, seeded by the node's name as the agent's own, or those it discovered with
    NVML or a description file), and each sample is taken on the node by its agent and collected through
    the executor (`RayExecutor.sample_gpus`), so the GPU sampler reads the node's figures, not the server's.
    A sample raises ExecutorError while the agent does not answer; without an executor it is empty."""

    def __init__(
        self,
        cards: GpuInventory,
        name: str,
        executor: RayExecutor | None,
        agent: str,
        declared: FakeBackend | None = None,
    ) -> None:
        self.cards, self.name, self.executor, self.agent, self.declared = cards, name, executor, agent, declared

    def discover(self) -> GpuInventory:
        """The cards the agent reported (discovery runs on the node, when its agent starts)."""
        return self.cards

    def sample(self, now: float) -> NodeSample:
        """The agent's reading of the node's GPUs, stamped `now`."""
        return self.executor.sample_gpus(self.agent, now) if self.executor is not None else NodeSample(now)

    def close(self) -> None:
        """Release the declared cards' backend (the agent keeps its own)."""
        if self.declared is not None:
            self.declared.close()


def refuse_mig(node: str) -> MigAccess:
    """MIG access of a cluster node's real cards: ConflictError (MIG is applied on the node, not yet done)."""

    def refuse() -> AbstractContextManager[MigNvml]:
        raise ConflictError(f"node {node}: {CLUSTER_NODE_REFUSAL}")

    return refuse


def _discovered_mode(gpu_mode: str | None, node: str, simulated: bool) -> SharingMode:
    """The default mode of a cluster node's discovered cards: the server's GPUPOOL_GPU_MODE, else exclusive
    (as the local host's); `mps` needs a daemon on the node, so real cards fall back to exclusive (logged)."""
    mode = SharingMode(gpu_mode or SharingMode.EXCLUSIVE.value)
    if mode == SharingMode.MPS and not simulated:
        log.warning(
            "node %s: GPUPOOL_GPU_MODE=mps is not applied to a cluster node's real GPUs (%s); they "
            "default to exclusive",
            node,
            CLUSTER_NODE_REFUSAL,
        )
        return SharingMode.EXCLUSIVE
    return mode


def _gpus_from_description(
    description: NodeDescription, agent: str, executor: RayExecutor | None, gpu_mode: str | None
) -> LocalGpus:
    """The GPUs of a described node: declared simulated ones (`gpu_mode`, else shared, by default), else
    discovered ones (see _discovered_mode), else none."""
    if description.gpus:
        fake = FakeBackend(declared_description(description.gpus, description.name))
        backend = AgentSampledGpus(fake.discover(), "fake", executor, agent, fake) if executor is not None else fake
        mode = SharingMode(gpu_mode or SharingMode.SHARED.value)
        return LocalGpus(backend, fake.discover(), "fake", True, mode, fake_mig(fake))
    if description.gpu_inventory:
        cards = GpuInventory.from_dict(description.gpu_inventory)
        kind = "fake" if description.gpus_simulated else "nvml"
        return LocalGpus(
            AgentSampledGpus(cards, kind, executor, agent),
            cards,
            kind,
            description.gpus_simulated,
            _discovered_mode(gpu_mode, description.name, description.gpus_simulated),
            refuse_mig(description.name),
            remote=True,
        )
    fake = FakeBackend({"node": description.name, "simulated": True, "gpus": []})
    return LocalGpus(fake, fake.discover(), "fake", True, SharingMode.SHARED, fake_mig(fake))


def node_from_description(
    description: NodeDescription, agent: str, executor: RayExecutor | None = None, gpu_mode: str | None = None
) -> LocalNode:
    """The pool node an agent describes: its CPUs, memory, address, and its GPUs (declared simulated ones or
    those the agent discovered, in `gpu_mode` by default when given), sampled by the agent through `executor`
    when given."""
    gpus = _gpus_from_description(description, agent, executor, gpu_mode)
    node = Node(
        name=description.name,
        cpu_milli=int(description.cpus * 1000),
        memory_mib=description.memory_mib,
        gpus=gpus.domain_gpus(),
        labels={RAY_NODE_LABEL: agent, **description.labels},
    )
    return LocalNode(node, gpus, description.address)


MARKER_FILE = ".gpupool-cluster-marker"


def write_marker(storage_root: Path) -> tuple[str, str]:
    """Write a fresh marker under `storage_root` (the shared storage): (its path, its content)."""
    storage_root.mkdir(parents=True, exist_ok=True)
    path, content = storage_root / MARKER_FILE, secrets.token_hex(16)
    partial = path.with_name(MARKER_FILE + ".partial")
    partial.write_text(content, encoding="utf-8")
    os.replace(partial, path)
    return str(path), content


class RayNodeProvider:
    """The nodes of the Ray cluster `executor` is connected to (see the module docstring). A node keeps
    the same LocalNode object (and GPU backend) while it stays in the cluster; `gpu_mode` is the server's
    default sharing mode (GPUPOOL_GPU_MODE) for the nodes' cards. With `storage_root`, a marker
    written there at start-up must be readable on a node for it to join: the storage scopes are a shared
    filesystem mounted at the same path on every node, and a node that does not see it is refused (logged)."""

    source = "ray"

    def __init__(self, executor: RayExecutor, storage_root: Path | None = None, gpu_mode: str | None = None) -> None:
        self.executor, self.gpu_mode = executor, gpu_mode
        self.marker = write_marker(storage_root) if storage_root is not None else None
        self._known: dict[str, tuple[str, LocalNode]] = {}  # node name -> (agent, node)
        self._kept: frozenset[str] | None = None  # silent agents of alive nodes, within the silence limit
        self._given_up: set[str] = set()  # silent agents past the limit (their nodes were treated as lost)

    def nodes(self) -> list[LocalNode]:
        """The nodes whose agents answer now, by name (one call to each agent; agents are created for new
        nodes). A node whose agent does not answer this pass is not offered but kept (`keeps`) while Ray
        reports it alive: an agent restarted, recreated or busy is not a lost machine, so its replicas are
        not reported lost; the node worker places no new work on it meanwhile. Once the agent has been silent
        for the executor's silence limit the node is no longer kept (it is lost). A node whose agent never
        answered has not joined yet."""
        # the first pass waits as long as one agent call may (agents created now, or a server that restarted
        # while one is slow); later passes wait survey_timeout_s, and a node whose agent is late joins later
        first = self._kept is None
        survey = self.executor.survey(self.marker, self.executor.call_timeout_s if first else None)
        self._kept = self._within_limit(survey.silent)
        present: dict[str, tuple[str, LocalNode]] = {}
        for agent, description in survey.answered:
            known = self._known.get(description.name)
            present[description.name] = (
                known
                if known and known[0] == agent
                else (agent, node_from_description(description, agent, self.executor, self.gpu_mode))
            )
        offered = sorted(present)
        for name, (agent, node) in self._known.items():
            if name not in present and agent in self._kept:
                present[name] = (agent, node)  # remembered, so that it comes back as the same node
        self._known = present
        return [present[name][1] for name in offered]

    def _within_limit(self, silent: frozenset[str]) -> frozenset[str]:
        """The agents of `silent` whose silence is within the executor's limit; one warning for each agent
        that has just passed it (its node is treated as lost from this pass on)."""
        overdue = {agent: silent_for for agent in silent if (silent_for := self.executor.overdue(agent)) is not None}
        for agent in sorted(set(overdue) - self._given_up):
            node = next((name for name, (known, _) in self._known.items() if known == agent), None)
            log.warning(
                "node %s has not answered for %.0f s (agent %s; the limit is %g s, "
                "GPUPOOL_AGENT_SILENCE_LIMIT_S): it is treated as lost, its replicas are retried elsewhere, and "
                "it joins again as a new node once its agent answers",
                node or "(not described yet)",
                overdue[agent],
                agent,
                self.executor.silence_limit_s,
            )
        self._given_up = set(overdue)
        return frozenset(silent - set(overdue))

    def keeps(self, labels: dict[str, str]) -> bool:
        """Whether a stored node that the last pass did not offer still exists: its agent (the node's
        RAY_NODE_LABEL) is on a node Ray reports alive but did not answer (e.g. a server restarted while the
        agent was busy, restarting or being created again) for less than the silence limit, so its replicas
        are not lost."""
        return self._kept is not None and labels.get(RAY_NODE_LABEL) in self._kept
