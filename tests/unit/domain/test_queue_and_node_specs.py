"""Queue definitions and node descriptions: parsing, defaults, and clear refusals."""

from __future__ import annotations

from typing import Any

import pytest
from tests.builders import node

from gpupool.domain.errors import ValidationError
from gpupool.domain.nodes import Gpu, MigInstance, Node
from gpupool.domain.queues import UNLIMITED, QueueSpec, parse_queue
from gpupool.domain.resources import ReplicaRequest, ResourceVector, SharingMode


def test_a_queue_definition_is_parsed() -> None:
    spec = parse_queue("vision", {"guaranteed": {"gpu": 8, "cpu": 64}, "limit": {"gpu": 16}, "weight": 2,
                                  "lend": False, "strict_fifo": True})
    # guarantee: 8 GPU = 8000 milli, 64 cores = 64000 milli, memory not named = 0
    assert spec.guaranteed == ResourceVector(64000, 0, 8000)
    assert (spec.weight, spec.lend, spec.strict_fifo) == (2.0, False, True)


def test_a_limit_leaves_the_resources_it_does_not_name_unlimited() -> None:
    # `limit: {gpu: 4}` caps GPUs only; reading the missing CPU and memory as 0 would refuse every request
    spec = parse_queue("a", {"limit": {"gpu": 4}})
    assert spec.limit == ResourceVector(UNLIMITED, UNLIMITED, 4000)
    assert parse_queue("a", {}).limit is None
    assert parse_queue("a", {"guaranteed": {"gpu": 0.5}}).guaranteed == ResourceVector(0, 0, 500)


@pytest.mark.parametrize(("data", "words"), [
    ({"guaranteed": {"gpu": 8}, "limit": {"gpu": 4}}, "limit: the guarantee exceeds the limit for gpu"),
    ({"weight": 0}, "weight: weight must be above 0"),
    ({"lend": "yes"}, "lend: expected true or false"),
    ({"gaurantee": {}}, 'a.gaurantee: unknown field (did you mean "guaranteed"?)'),
    ({"guaranteed": {"gpus": 1}}, 'guaranteed.gpus: unknown field (did you mean "gpu"?)'),
    ({"guaranteed": {"gpu": -1}}, "guaranteed.gpu: GPU amount must not be negative"),
    ({"guaranteed": {"gpu": True}}, "guaranteed.gpu: expected a number, got a boolean"),
    ({"guaranteed": {"memory": 64}}, "guaranteed.memory: memory 64 needs a unit"),
    ({"guaranteed": 8}, "expected a mapping such as {cpu: 32, memory: 256GiB, gpu: 8}"),
    ([1], "expected a mapping with guaranteed, limit, weight, lend, strict_fifo"),
])
def test_queue_nonsense_is_refused(data: Any, words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_queue("a", data)
    assert words in str(caught.value)


def test_queue_spec_checks_its_own_invariants() -> None:
    with pytest.raises(ValidationError, match="a queue needs a name"):
        QueueSpec("")
    with pytest.raises(ValidationError, match="guaranteed amounts must not be negative"):
        QueueSpec("a", guaranteed=ResourceVector(0, 0, -1))


@pytest.mark.parametrize(("make", "words"), [
    (lambda: Node("", 1000, 1024), "a node needs a name"),
    (lambda: Node("n", -1, 1024), "node n: CPU and memory must not be negative"),
    (lambda: Node("n", 1000, 1024, (Gpu(0, "A100", 1), Gpu(0, "A100", 1))), "GPU indices must be unique, got [0, 0]"),
    (lambda: Gpu(-1, "A100", 1024), "index and memory must not be negative"),
    (lambda: Gpu(0, "A100", 1024, mig_instances=(MigInstance("1g.10gb"),)), "MIG instances given but the mode is"),
])
def test_node_nonsense_is_refused(make: Any, words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        make()
    assert words in str(caught.value)


def test_node_capacity_labels_and_taints() -> None:
    n = node("n1").cpu(32).memory("128GiB").gpus(4, "A100").rack("r1").taint("gpu-only").build()
    # 4 cards * 1000 milli
    assert n.capacity == ResourceVector(32000, 131072, 4000)
    assert n.rack == "r1"
    assert not n.tolerated_by(ReplicaRequest())
    assert n.tolerated_by(ReplicaRequest(tolerations=("gpu-only",)))
    assert n.selected_by(ReplicaRequest(node_selector=(("topology.gpupool.io/rack", "r1"),)))
    assert not n.selected_by(ReplicaRequest(node_selector=(("topology.gpupool.io/rack", "r2"),)))


def test_mig_instances_count_their_share_of_the_card() -> None:
    card = Gpu(0, "A100", 81920, SharingMode.MIG, mig_instances=(MigInstance("3g.40gb"), MigInstance("1g.10gb")))
    # round(3 / 7 * 1000) = 429, round(1 / 7 * 1000) = 143
    assert [card.mig_milli(i) for i in card.mig_instances] == [428, 142]
    assert SharingMode.SHARED.allows_shares and SharingMode.MPS.allows_shares
    assert not SharingMode.EXCLUSIVE.allows_shares and not SharingMode.MIG.allows_shares
