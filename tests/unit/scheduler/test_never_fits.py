"""'Can never run': requests that would not fit even an empty pool are named at submission and in the cycle."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tests.builders import JobBuilder, cycle, job, node, on, running

from gpupool.domain.nodes import Node
from gpupool.scheduler.feasibility import NeverFitsChecker

POOL = [
    node("big").cpu(64).memory("512GiB").gpus(8, "A100").build(),
    node("small").cpu(16).memory("64GiB").gpus(2, "V100", memory="16GiB", mode="shared").build(),
    node("cpu").cpu(96).memory("256GiB").build(),
]


@pytest.mark.parametrize(("workload", "words"), [
    # the biggest node has 8 cards: 9 on one node never fits
    (job("w").gpu(9), "a replica asks for 9 GPUs on one node, but the largest node has 8"),
    # 2 V100 cards at most
    (job("w").replicas(1, gpu={"count": 3, "model": "V100"}), "the largest node has 2 of model V100"),
    (job("w").replicas(1, gpu={"count": 1, "model": "H100"}), "no node has a GPU of model H100"),
    (job("w").replicas(1, cpu=128), "a replica asks for 128 CPU; the largest node has 96"),
    (job("w").replicas(1, memory="1TiB"), "a replica asks for 1024 GiB of memory; the largest node has 512 GiB"),
    # cards that take shares have 16 GiB; 20 GiB of one card is more than any shareable card holds
    (job("w").replicas(1, gpu={"memory": "20GiB"}), "1 with too little free GPU"),
    # a whole card with at least 40 GiB: only the A100s, 8 of them
    (job("w").replicas(1, gpu={"count": 9, "memory": "40GiB"}), "the largest node has 8"),
    (job("w").replicas(1, gpu={"mig": "1g.10gb"}), "3 without a MIG 1g.10gb instance"),
    (job("w").replicas(1, gpu=1, node_selector=(("zone", "moon"),)), "3 excluded by node selector or taints"),
    # 2 replicas of 8 GPUs: only "big" has 8 cards, and it holds one replica
    (job("w").replicas(2, gpu=8), "the gang of 2 replicas does not fit the whole pool even when it is empty"),
])
def test_requests_that_never_fit_are_named_with_the_reason(workload: JobBuilder, words: str) -> None:
    reason = NeverFitsChecker(POOL).reason(workload.build())
    assert reason is not None and reason.startswith("can never run: ")
    assert words in reason


@pytest.mark.parametrize("workload", [
    job("w").gpu(8),                                        # exactly the biggest node
    job("w").replicas(1, gpu={"count": 2, "model": "V100"}),
    job("w").replicas(1, gpu=0.5),                          # a share on the shared V100s
    job("w").replicas(1, cpu=96),                           # the CPU-only node
    job("w").replicas(3, gpu=8).min_available(1),           # only one replica must start
])
def test_requests_that_fit_an_empty_pool_are_not_refused(workload: object) -> None:
    assert NeverFitsChecker(POOL).reason(workload.build()) is None


NO_WHOLE_GPU = "no node has a GPU that can be given whole (not MIG-partitioned)"


@pytest.mark.parametrize(("pool", "cards", "words"), [
    ([node("c").cpu(8).build()], 1, "this pool has no GPUs"),
    ([node("c").cpu(8).build(), node("d").cpu(8).build()], 1, "this pool has no GPUs"),
    ([node("m").mig("A100", ["7g.80gb"]).build()], 1, NO_WHOLE_GPU),
    # 2 cards, one of them MIG-partitioned: only 1 can be given whole
    ([node("m").gpus(1).mig("A100", ["7g.80gb"]).build()], 2,
     "a replica asks for 2 GPUs on one node, but the largest node has 1"),
])
def test_whole_gpus_count_only_cards_that_can_be_given_whole(pool: list[Node], cards: int, words: str) -> None:
    assert NeverFitsChecker(pool).reason(job("w").gpu(cards).build()) == f"can never run: {words}"


@pytest.mark.parametrize("gpu", [0.5, {"memory": "10GiB"}, {"mig": "1g.10gb"}])
def test_any_gpu_request_on_a_pool_without_gpus_says_so(gpu: object) -> None:
    reason = NeverFitsChecker([node("c").cpu(8).build()]).reason(job("w").replicas(1, gpu=gpu).build())
    assert reason == "can never run: this pool has no GPUs"


def test_an_empty_pool_can_run_nothing() -> None:
    assert NeverFitsChecker([]).reason(job("w").build()) == "can never run: the pool has no nodes"


def test_the_cycle_reports_can_never_run_instead_of_waiting_forever() -> None:
    decisions = cycle(POOL, [job("huge").gpu(9).build(), job("ok").at(1).gpu(1).build()])
    assert [b.workload_id for b in decisions.binds] == ["ok"]
    (pending,) = decisions.pending
    assert pending.workload_id == "huge"
    assert pending.reason == "can never run: a replica asks for 9 GPUs on one node, but the largest node has 8"
    assert not decisions.reservations and not decisions.preemptions


def test_a_busy_pool_is_not_never() -> None:
    # "big" is full now, but an 8-GPU job fits it once the running job ends: it waits, with a node-level reason
    full = running("r", [on("big", gpus=dict.fromkeys(range(8), 1000))], max_runtime=600, start=0)
    decisions = cycle(POOL, [job("eight").gpu(8).build()], [full], now=100)
    (pending,) = decisions.pending
    assert "can never run" not in pending.reason
    assert "0 of 3 nodes can take a replica" in pending.reason
    # ...and it gets a reservation for when "big" frees up, at 0 + 600
    assert [(r.workload_id, r.start_time) for r in decisions.reservations] == [("eight", 600)]


def test_cordoned_nodes_and_unhealthy_cards_may_come_back_so_they_are_not_never() -> None:
    big = node("big").gpus(8).build()
    cordoned = replace(big, schedulable=False)
    sick = replace(big, gpus=tuple(replace(g, healthy=False) for g in big.gpus))
    eight = job("e").gpu(8).build()
    for pool in ([node("small").gpus(2).build(), cordoned], [node("small").gpus(2).build(), sick]):
        assert NeverFitsChecker(pool).reason(eight) is None
    assert "largest node has 2" in (NeverFitsChecker([node("small").gpus(2).build()]).reason(eight) or "")
