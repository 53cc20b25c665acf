"""Rendezvous variables: torch.distributed's env:// variables and TensorFlow's TF_CONFIG, per replica."""

from __future__ import annotations

import json

import pytest

from gpupool.domain.errors import ValidationError
from gpupool.executors.rendezvous import ports_needed, rendezvous_env, tensorflow_env, torch_env
from gpupool.scheduler.types import ReplicaPlacement

ADDRESSES = {"n1": "10.0.0.1", "n2": "10.0.0.2", "local": "127.0.0.1"}


def place(node: str, role: str = "worker", ordinal: int = 0) -> ReplicaPlacement:
    return ReplicaPlacement(node, 1000, 1024, role=role, ordinal=ordinal)


def test_torch_single_node_two_replicas() -> None:
    envs = torch_env([place("local", ordinal=0), place("local", ordinal=1)], ADDRESSES, 29500)
    assert envs == [
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0",
         "LOCAL_WORLD_SIZE": "2", "NODE_RANK": "0"},
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1",
         "LOCAL_WORLD_SIZE": "2", "NODE_RANK": "0"},
    ]


def test_torch_two_nodes_ranks_follow_replica_order() -> None:
    # Replicas 0,1 on n2 and 2,3 on n1: n2 is node 0 (it holds rank 0, the master), n1 is node 1.
    replicas = [place("n2", ordinal=0), place("n2", ordinal=1), place("n1", ordinal=2), place("n1", ordinal=3)]
    envs = torch_env(replicas, ADDRESSES, 23456)
    assert {e["MASTER_ADDR"] for e in envs} == {"10.0.0.2"}
    assert [(e["RANK"], e["LOCAL_RANK"], e["NODE_RANK"], e["LOCAL_WORLD_SIZE"]) for e in envs] == [
        ("0", "0", "0", "2"), ("1", "1", "0", "2"), ("2", "0", "1", "2"), ("3", "1", "1", "2"),
    ]
    assert {e["WORLD_SIZE"] for e in envs} == {"4"}


def test_torch_interleaved_nodes_count_local_ranks_per_node() -> None:
    envs = torch_env([place("n1"), place("n2"), place("n1")], ADDRESSES, 1234)
    assert [(e["LOCAL_RANK"], e["NODE_RANK"], e["LOCAL_WORLD_SIZE"]) for e in envs] == [
        ("0", "0", "2"), ("0", "1", "1"), ("1", "0", "2"),
    ]


@pytest.mark.parametrize("port", [0, 65536, -1, True])
def test_torch_refuses_bad_ports(port: int) -> None:
    with pytest.raises(ValidationError, match="port"):
        torch_env([place("n1")], ADDRESSES, port)


def test_unknown_node_address_is_an_error() -> None:
    with pytest.raises(ValidationError, match="no network address is known for node 'n9'"):
        torch_env([place("n1"), place("n9")], ADDRESSES, 1234)


def _tf(envs: list[dict[str, str]]) -> list[dict[str, object]]:
    return [json.loads(e["TF_CONFIG"]) for e in envs]


def test_tensorflow_parameter_server_job() -> None:
    replicas = [place("n1", "chief", 0), place("n1", "worker", 0), place("n2", "worker", 1), place("n2", "ps", 0)]
    configs = _tf(tensorflow_env(replicas, ADDRESSES, [2222, 2223, 2224, 2225]))
    cluster = {"chief": ["10.0.0.1:2222"], "worker": ["10.0.0.1:2223", "10.0.0.2:2224"], "ps": ["10.0.0.2:2225"]}
    assert all(c["cluster"] == cluster for c in configs)
    assert [c["task"] for c in configs] == [
        {"type": "chief", "index": 0}, {"type": "worker", "index": 0}, {"type": "worker", "index": 1},
        {"type": "ps", "index": 0},
    ]


def test_tensorflow_task_lists_follow_ordinals_not_replica_order() -> None:
    replicas = [place("n1", "worker", 1), place("n2", "worker", 0)]
    configs = _tf(tensorflow_env(replicas, ADDRESSES, [3001, 3000]))
    assert configs[0]["cluster"] == {"worker": ["10.0.0.2:3000", "10.0.0.1:3001"]}
    assert [c["task"] for c in configs] == [{"type": "worker", "index": 1}, {"type": "worker", "index": 0}]


def test_tensorflow_evaluator_is_left_out_of_the_cluster() -> None:
    replicas = [place("n1", "worker", 0), place("n1", "evaluator", 0)]
    configs = _tf(tensorflow_env(replicas, ADDRESSES, [4000, 4001]))
    assert configs[1] == {"cluster": {"worker": ["10.0.0.1:4000"]}, "task": {"type": "evaluator", "index": 0}}


@pytest.mark.parametrize(("replicas", "ports", "message"), [
    ([place("n1", "trainer")], [1], "not a TensorFlow task type"),
    ([place("n1", "chief", 0), place("n2", "chief", 1)], [1, 2], "at most one chief"),
    ([place("n1", "worker", 0), place("n2", "worker", 2)], [1, 2], "ordinals 0..1"),
    ([place("n1", "worker", 0)], [1, 2], "one port per replica"),
    ([place("n1", "worker", 0), place("n1", "ps", 0)], [5, 5], "same host and port"),
])
def test_tensorflow_refuses_inconsistent_clusters(replicas: list[ReplicaPlacement], ports: list[int],
                                                  message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        tensorflow_env(replicas, ADDRESSES, ports)


def test_rendezvous_env_dispatches_and_counts_ports() -> None:
    replicas = [place("n1", ordinal=0), place("n1", ordinal=1)]
    assert rendezvous_env(None, replicas, ADDRESSES, []) == [{}, {}]
    assert rendezvous_env("torch", replicas, ADDRESSES, [9000])[1]["RANK"] == "1"
    assert "TF_CONFIG" in rendezvous_env("tensorflow", replicas, ADDRESSES, [9000, 9001])[0]
    assert (ports_needed("torch", 8), ports_needed("tensorflow", 8), ports_needed(None, 8)) == (1, 8, 0)
    with pytest.raises(ValidationError, match="unknown distributed kind 'mpi'"):
        rendezvous_env("mpi", replicas, ADDRESSES, [])
    with pytest.raises(ValidationError, match="needs 1 port"):
        rendezvous_env("torch", replicas, ADDRESSES, [1, 2])
