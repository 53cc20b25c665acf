"""Rendezvous variables for distributed training, as pure functions of the replicas' placements.

The server calls these once per gang start with the replicas in replica order (replica number = position
in the sequence), the address of each node and the port(s) it chose; each function returns one mapping per
replica, in the same order. Nothing here opens a socket: choosing free ports is the caller's job
(`Executor.free_ports` on the node of replica 0).

- `torch`: the variables `torch.distributed` reads with `init_method="env://"` and that torchrun sets:
  MASTER_ADDR / MASTER_PORT (the node of replica 0), WORLD_SIZE, RANK (the replica's position), LOCAL_RANK
  and LOCAL_WORLD_SIZE (position and count among the replicas on the same node), NODE_RANK (the node's
  position among the gang's nodes, in order of first appearance).
- `tensorflow`: TF_CONFIG = {"cluster": {role: ["host:port", ...]}, "task": {"type": role, "index": i}},
  where roles are chief, worker, ps and evaluator, `index` is the replica's ordinal within its role, and
  every task listens on its own port. As in TensorFlow's own conventions there is at most one chief and at
  most one evaluator, and the evaluator is not part of the training cluster (it is left out of "cluster").
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Protocol

from gpupool.domain.errors import ValidationError

LOCALHOST = "127.0.0.1"
TORCH = "torch"
TENSORFLOW = "tensorflow"
DISTRIBUTED_KINDS = (TORCH, TENSORFLOW)
TF_ROLES = ("chief", "worker", "ps", "evaluator")
TF_SINGLETON_ROLES = ("chief", "evaluator")
TF_OUTSIDE_CLUSTER = ("evaluator",)


class PlacedReplica(Protocol):
    """What rendezvous needs of a replica placement (gpupool.domain.placement.ReplicaPlacement has it)."""

    @property
    def node(self) -> str: ...

    @property
    def role(self) -> str: ...

    @property
    def ordinal(self) -> int: ...


def _check_port(port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValidationError(f"a rendezvous port must be an integer in 1..65535, got {port!r}")


def _address(node_addresses: Mapping[str, str], node: str) -> str:
    address = node_addresses.get(node)
    if not address:
        raise ValidationError(f"no network address is known for node {node!r}; register the node's address")
    return address


def torch_env(replicas: Sequence[PlacedReplica], node_addresses: Mapping[str, str],
              master_port: int) -> list[dict[str, str]]:
    """torch.distributed variables for each replica (see the module docstring)."""
    if not replicas:
        return []
    _check_port(master_port)
    master_addr = _address(node_addresses, replicas[0].node)
    node_order: list[str] = []
    per_node: dict[str, int] = {}
    for replica in replicas:
        if replica.node not in per_node:
            node_order.append(replica.node)
            per_node[replica.node] = 0
        per_node[replica.node] += 1
    seen: dict[str, int] = {}
    envs: list[dict[str, str]] = []
    for rank, replica in enumerate(replicas):
        _address(node_addresses, replica.node)
        local_rank = seen.get(replica.node, 0)
        seen[replica.node] = local_rank + 1
        envs.append({
            "MASTER_ADDR": master_addr,
            "MASTER_PORT": str(master_port),
            "WORLD_SIZE": str(len(replicas)),
            "RANK": str(rank),
            "LOCAL_RANK": str(local_rank),
            "LOCAL_WORLD_SIZE": str(per_node[replica.node]),
            "NODE_RANK": str(node_order.index(replica.node)),
        })
    return envs


def _check_tf_roles(replicas: Sequence[PlacedReplica]) -> dict[str, list[int]]:
    """role -> replica positions ordered by ordinal; refuses unknown roles and gaps in ordinals."""
    by_role: dict[str, list[int]] = {}
    for position, replica in enumerate(replicas):
        if replica.role not in TF_ROLES:
            raise ValidationError(f"role {replica.role!r} is not a TensorFlow task type; use one of "
                                  f"{', '.join(TF_ROLES)}", "roles")
        by_role.setdefault(replica.role, []).append(position)
    for role, positions in by_role.items():
        positions.sort(key=lambda p: replicas[p].ordinal)
        ordinals = [replicas[p].ordinal for p in positions]
        if ordinals != list(range(len(positions))):
            raise ValidationError(f"{role} replicas must have ordinals 0..{len(positions) - 1}, got {ordinals}")
        if role in TF_SINGLETON_ROLES and len(positions) > 1:
            raise ValidationError(f"TensorFlow allows at most one {role}, got {len(positions)}", f"roles.{role}")
    return by_role


def tensorflow_env(replicas: Sequence[PlacedReplica], node_addresses: Mapping[str, str],
                   ports: Sequence[int]) -> list[dict[str, str]]:
    """TF_CONFIG for each replica; `ports[i]` is the port replica i listens on (see the module docstring)."""
    if len(ports) != len(replicas):
        raise ValidationError(f"TensorFlow needs one port per replica: {len(replicas)} replicas, {len(ports)} ports")
    for port in ports:
        _check_port(port)
    endpoints = [f"{_address(node_addresses, r.node)}:{port}" for r, port in zip(replicas, ports, strict=True)]
    if len(set(endpoints)) != len(endpoints):
        raise ValidationError("two TensorFlow tasks would listen on the same host and port")
    by_role = _check_tf_roles(replicas)
    cluster = {role: [endpoints[p] for p in by_role[role]]
               for role in TF_ROLES if role in by_role and role not in TF_OUTSIDE_CLUSTER}
    envs: list[dict[str, str]] = []
    for replica in replicas:
        config = {"cluster": cluster, "task": {"type": replica.role, "index": replica.ordinal}}
        envs.append({"TF_CONFIG": json.dumps(config, sort_keys=True)})
    return envs


def ports_needed(kind: str | None, replica_count: int) -> int:
    """How many ports the server must choose for a gang: torch 1, tensorflow one per replica, else 0."""
    if kind == TORCH:
        return 1
    if kind == TENSORFLOW:
        return replica_count
    return 0


def rendezvous_env(kind: str | None, replicas: Sequence[PlacedReplica], node_addresses: Mapping[str, str],
                   ports: Sequence[int]) -> list[dict[str, str]]:
    """The rendezvous variables of each replica for `distributed: kind` (None: none at all). `ports` holds
    `ports_needed(kind, len(replicas))` ports."""
    if kind is None:
        return [{} for _ in replicas]
    if kind not in DISTRIBUTED_KINDS:
        raise ValidationError(f"unknown distributed kind {kind!r}; use one of {', '.join(DISTRIBUTED_KINDS)}",
                              "distributed")
    if len(ports) != ports_needed(kind, len(replicas)):
        raise ValidationError(f"distributed {kind} needs {ports_needed(kind, len(replicas))} port(s), "
                              f"got {len(ports)}")
    if kind == TORCH:
        return torch_env(replicas, node_addresses, ports[0]) if replicas else []
    return tensorflow_env(replicas, node_addresses, ports)
