"""Why pending: every workload left pending gets a human reason and its 1-based position in its queue."""

from __future__ import annotations

import pytest
from tests.builders import cycle, job, node, on, queue, running

from gpupool.domain.queues import QueueSpec
from gpupool.scheduler.decisions import Decisions


def reasons(decisions: Decisions) -> dict[str, str]:
    return {p.workload_id: p.reason for p in decisions.pending}


def test_which_resource_on_how_many_nodes() -> None:
    # six nodes, each failing a different check for 8 CPU, 32 GiB, 1 A100 (counted by their first failing check)
    pool = [node("n-cordoned").cordoned().gpus(2).build(), node("n-taint").gpus(2).taint("x").build(),
            node("n-v100").gpus(2, "V100").build(), node("n-cpu").cpu(4).gpus(2).build(),
            node("n-mem").memory("16GiB").gpus(2).build(), node("n-busy").gpus(2).build()]
    runs = [running("r", [on("n-busy", gpus={0: 1000, 1: 1000})], queue="q")]
    decisions = cycle(pool, [job("w").replicas(1, cpu=8, memory="32GiB", gpu={"count": 1, "model": "A100"}).build()],
                      runs)
    assert reasons(decisions)["w"] == (
        "0 of 6 nodes can take a replica (8 CPU, 32 GiB, 1 GPU (A100)): 1 not schedulable; "
        "1 excluded by node selector or taints; 1 without a A100 GPU; 1 with too little free CPU; "
        "1 with too little free memory; 1 with too little free GPU for 1 GPU (A100)")


@pytest.mark.parametrize(("queues", "expected"), [
    # the limit: 4 running + 1 > 4
    ([queue("a", limit_gpu=4)], "queue a would exceed its limit: gpu 5 > limit 4"),
    # the owed guarantee: b keeps 2 of the 8 cards for itself; a may use 6, has 4, and asks for 3 more
    ([queue("a"), queue("b", 2, lend=False)],
     "queue a would borrow beyond its guarantee, and the idle capacity it could borrow is owed to other queues "
     "that do not lend: gpu 7 > available to borrow 6"),
])
def test_which_quota(queues: list[QueueSpec], expected: str) -> None:
    pool = [node("n1").gpus(8).build()]
    runs = [running("r", [on("n1", gpus=dict.fromkeys(range(4), 1000))], queue="a")]
    cards = 1 if len(queues) == 1 else 3
    assert reasons(cycle(pool, [job("w").queue("a").gpu(cards).build()], runs, queues))["w"] == expected


def test_more_than_the_limit_alone_can_never_start_under_it() -> None:
    # 6 GPUs asked, limit 4: even an idle queue could not start it; 3 GPUs fit once a's 4 running ones end
    pool = [node("n1").gpus(8).build()]
    runs = [running("r", [on("n1", gpus=dict.fromkeys(range(4), 1000))], queue="a")]
    decisions = cycle(pool, [job("six").queue("a").gpu(6).build(), job("three").queue("a").at(1).gpu(3).build()],
                      runs, [queue("a", limit_gpu=4)])
    assert reasons(decisions) == {
        "six": "can never start under the current limit of queue a (gpu 6 > limit 4) unless the limit is raised",
        "three": "queue a would exceed its limit: gpu 7 > limit 4"}


def test_which_gang_member() -> None:
    pool = [node("n1").gpus(2).build(), node("n2").gpus(2).build()]
    runs = [running("r", [on("n2", gpus={0: 1000})])]
    decisions = cycle(pool, [job("g").replicas(1, gpu=2, role="chief").replicas(2, gpu=1).build()], runs)
    # chief takes n1's 2 cards, worker 0 takes n2's free card, worker 1 (the 3rd replica) finds nothing
    assert reasons(decisions)["g"] == ("gang of 3: only 2 replicas fit together; worker 1 of 3: 0 of 2 nodes can "
                                       "take a replica (1 CPU, 1 GiB, 1 GPU): 2 with too little free GPU for 1 GPU")


def test_behind_which_reservation_and_strict_fifo() -> None:
    pool = [node("n1").gpus(2).build(), node("n2").gpus(2).build()]
    runs = [running("r", [on("n1", gpus={0: 1000})], queue="x", priority=9, max_runtime=500),
            running("forever", [on("n2", gpus={0: 1000, 1: 1000})], queue="x", priority=9)]
    pending = [job("head").queue("a").gpu(2).build(), job("later").queue("a").at(1).gpu(1).build(),
               job("fifo-head").queue("f").replicas(1, gpu={"count": 1, "model": "H100"}).build(),
               job("fifo-next").queue("f").at(1).replicas(1, cpu=1).build()]
    decisions = cycle(pool, pending, runs, [queue("a"), queue("f", strict_fifo=True), queue("x")], now=100)
    why = reasons(decisions)
    # r ends at 0 + 500 and frees n1: the head is reserved n1's cards 0 and 1 (n2 is held by work without end)
    assert why["head"].endswith("; reserved to start by t=500 on n1")
    assert why["later"] == "starting now would delay head, which holds a reservation to start by t=500"
    assert why["fifo-head"] == "can never run: no node has a GPU of model H100"
    assert why["fifo-next"] == "behind fifo-head, the head of strict-FIFO queue f"


def test_positions_count_pending_work_in_queue_order() -> None:
    pool = [node("n1").gpus(2).build()]
    pending = [
        job("a-low").queue("a").priority(1).at(0).gpu(2).build(),
        job("a-high").queue("a").priority(5).at(9).gpu(1).build(),      # binds: highest priority first
        job("a-mid-early").queue("a").priority(3).at(1).gpu(2).build(),
        job("a-mid-late").queue("a").priority(3).at(2).gpu(2).build(),
        job("b-only").queue("b").gpu(2).build(),
    ]
    decisions = cycle(pool, pending, min_runtime_s=10**9)
    assert [b.workload_id for b in decisions.binds] == ["a-high"]
    # queue order: priority, then submit time; the bound a-high takes no position
    positions = {p.workload_id: p.position for p in decisions.pending}
    assert positions == {"a-mid-early": 1, "a-mid-late": 2, "a-low": 3, "b-only": 1}
    assert all(p.reason for p in decisions.pending)
