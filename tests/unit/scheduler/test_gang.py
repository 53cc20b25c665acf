"""Gangs: all replicas (or min_available of them) in one cycle or none; fewest nodes, then one rack."""

from __future__ import annotations

from tests.builders import cycle, job, node, on, running, snapshot, snapshot_state

from gpupool.scheduler.decisions import Decisions
from gpupool.scheduler.placement.registry import make_policy
from gpupool.scheduler.placer import Placer


def layout(decisions: Decisions, workload_id: str) -> list[tuple[str, str, int, list[int]]]:
    """(node, role, ordinal, card indices) of each replica the workload was bound with."""
    return [(p.node, p.role, p.ordinal, [g.index for g in p.gpus]) for p in decisions.bound()[workload_id]]


def test_a_gang_that_does_not_fit_leaves_nothing_assumed() -> None:
    # n1: 8 free cards, n2: 2 free (6 taken). 3 replicas x 4 cards: two fit on n1, the third nowhere
    pool = [node("n1").gpus(8).build(), node("n2").gpus(8).build()]
    snap = snapshot(pool, [running("r", [on("n2", gpus=dict.fromkeys(range(6), 1000))])])
    before = snapshot_state(snap)
    result = Placer(make_policy("bestfit")).place_gang(snap, job("g").replicas(3, gpu=4).build())
    assert not result.ok and result.placements == ()
    assert snapshot_state(snap) == before  # the two replicas placed on the way were given back
    assert result.reason.startswith("gang of 3: only 2 replicas fit together; worker 2 of 3: 0 of 2 nodes can take")


def test_in_the_cycle_a_failed_gang_holds_nothing_and_later_work_uses_the_room() -> None:
    pool = [node("n1").gpus(8).build(), node("n2").gpus(8).build()]
    busy = running("r", [on("n2", gpus=dict.fromkeys(range(6), 1000))])
    decisions = cycle(pool, [job("g").replicas(3, gpu=4).build(), job("s").at(1).gpu(3).build()], [busy])
    assert "g" not in decisions.bound()
    # s takes cards 0-2 of n1, which the failed gang had tried: nothing of the gang was left there
    assert layout(decisions, "s") == [("n1", "worker", 0, [0, 1, 2])]
    assert decisions.pending_by_id()["g"].reason.startswith("gang of 3: only 2 replicas fit together; worker 2 of 3")


def test_a_gang_that_fits_binds_every_replica_in_one_decision() -> None:
    pool = [node("n1").gpus(4).build(), node("c").cpu(8).build()]
    decisions = cycle(pool, [job("g").replicas(1, cpu=2, role="chief").replicas(3, gpu=1).build()])
    assert [b.workload_id for b in decisions.binds] == ["g"]
    # the CPU-only chief stays off the GPU node; workers take cards 0, 1, 2 of n1
    assert layout(decisions, "g") == [("c", "chief", 0, []), ("n1", "worker", 0, [0]), ("n1", "worker", 1, [1]),
                                      ("n1", "worker", 2, [2])]


def test_gangs_prefer_the_fewest_nodes() -> None:
    # a has 2 free cards, b and c 4 each; 4 replicas x 1 card
    pool = [node(n).gpus(4).build() for n in "abc"]
    busy = running("r", [on("a", gpus={0: 1000, 1: 1000})])
    packed = cycle(pool, [job("g").replicas(4, gpu=1).build()], [busy])
    # first replica: bonus = min(replicas the node holds, 4) / 4: a 2/4, b 4/4, c 4/4 -> b (first of the tie);
    # the others get +2 on a node already used -> all four on b
    assert {p[0] for p in layout(packed, "g")} == {"b"}
    # without topology scoring, bestfit alone fills the tightest node a first and spills onto b
    loose = cycle(pool, [job("g").replicas(4, gpu=1).build()], [busy], gang_topology=False)
    assert [p[0] for p in layout(loose, "g")] == ["a", "a", "b", "b"]


def test_gangs_that_span_nodes_prefer_one_rack() -> None:
    # 2 replicas x 8 cards need two whole nodes; a and c share rack r1, b is in r2
    pool = [node("a").gpus(8).rack("r1").build(), node("b").gpus(8).rack("r2").build(),
            node("c").gpus(8).rack("r1").build()]
    decisions = cycle(pool, [job("g").replicas(2, gpu=8).build()])
    # replica 0 on a (all nodes tie); replica 1: +1 for a node in a used rack -> c, not b
    assert [p[0] for p in layout(decisions, "g")] == ["a", "c"]
    loose = cycle(pool, [job("g").replicas(2, gpu=8).build()], gang_topology=False)
    assert [p[0] for p in layout(loose, "g")] == ["a", "b"]


def test_min_available_binds_what_fits_once_enough_do() -> None:
    # 6 replicas, at least 3 together; n1 has 4 cards -> 4 are bound, the gang runs with 4 of 6
    decisions = cycle([node("n1").gpus(4).build()], [job("g").replicas(6, gpu=1).min_available(3).build()])
    assert [p[3] for p in layout(decisions, "g")] == [[0], [1], [2], [3]]


def test_min_available_not_reached_binds_nothing() -> None:
    pool = [node("n1").gpus(2).build(), node("n2").gpus(8).build()]
    full = running("r", [on("n2", gpus=dict.fromkeys(range(8), 1000))])
    snap = snapshot(pool, [full])
    before = snapshot_state(snap)
    gang = job("g").replicas(6, gpu=1).min_available(3).build()
    result = Placer(make_policy("bestfit")).place_gang(snap, gang)
    # only 2 free cards: 2 < 3 replicas -> nothing, and nothing left assumed
    assert not result.ok and snapshot_state(snap) == before
    decisions = cycle(pool, [gang], [full])
    assert not decisions.binds
    assert decisions.pending[0].reason.startswith("gang of 6: only 2 replicas fit together; worker 2 of 6")


def test_first_replica_prefers_the_rack_that_holds_the_whole_gang() -> None:
    # racks: r1 = {a}, r2 = {b, c}; each node holds one 8-GPU replica. The node term ties (1 replica of 2 each);
    # the rack term is min(rack total, 2) / (2 * 3): a -> 1/6, b and c -> 2/6, so the gang goes to b and c.
    nodes = [node("a").gpus(8).rack("r1").build(), node("b").gpus(8).rack("r2").build(),
             node("c").gpus(8).rack("r2").build()]
    decisions = cycle(nodes, [job("g").replicas(2, gpu=8).build()])
    assert sorted(p.node for p in decisions.binds[0].placements) == ["b", "c"]
