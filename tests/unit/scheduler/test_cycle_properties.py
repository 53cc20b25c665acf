"""Property tests of run_cycle on random pools, running sets and pending work (shares, whole cards, MIG,
CPU-only, gangs; random queues and profiles): binds never over-commit a card, a node or a queue limit, gangs
are all or nothing, every input is either bound or pending with a reason and a position, victims are allowed
victims, and the input snapshot is never changed."""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, given, settings
from tests.builders import snapshot, snapshot_state
from tests.scheduler_strategies import NOW, Scenario, scenarios

from gpupool.domain.resources import MILLI_PER_GPU, ResourceVector
from gpupool.scheduler.cycle import queue_order, run_cycle
from gpupool.scheduler.decisions import Decisions
from gpupool.scheduler.snapshot import ClusterSnapshot
from gpupool.scheduler.types import PendingWorkload, ReplicaPlacement, placements_usage

PROPERTY_SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decide(s: Scenario) -> Decisions:
    snap = snapshot(s.nodes, s.running)
    before = snapshot_state(snap)
    decisions = run_cycle(snap, s.pending, s.running, s.queues, s.profile, NOW)
    assert snapshot_state(snap) == before, "run_cycle changed the snapshot it was given"
    return decisions


@PROPERTY_SETTINGS
@given(scenarios())
def test_run_cycle_invariants(s: Scenario) -> None:
    decisions = decide(s)
    binds_never_over_commit_a_card_or_a_node(s, decisions)
    binds_respect_queue_limits(s, decisions)
    gangs_are_all_or_nothing_and_placements_match_requests(s, decisions)
    every_workload_is_bound_or_pending_with_a_reason_and_a_position(s, decisions)
    victims_are_allowed_victims(s, decisions)


def binds_never_over_commit_a_card_or_a_node(s: Scenario, decisions: Decisions) -> None:
    snap = snapshot(s.nodes, s.running)
    for bind in decisions.binds:
        snap.assume_all(bind.placements)  # raises OverCommitError if any placement does not fit
    for name in ("free_cpu", "free_mem", "free_milli", "free_gmem"):
        assert (getattr(snap, name) >= 0).all(), name
    taken = Counter((p.node, g.index, g.mig_instance) for w in [*s.running, *decisions.binds]
                    for p in w.placements for g in p.gpus if g.mig_instance is not None)
    assert all(n == 1 for n in taken.values()), "a MIG instance given twice"


def binds_respect_queue_limits(s: Scenario, decisions: Decisions) -> None:
    # usage once the decisions take effect: work preempted in this cycle no longer counts for its queue
    stopping = {p.victim_id for p in decisions.preemptions}
    usage: dict[str, ResourceVector] = {}
    for w in s.running:
        if w.id not in stopping:
            usage[w.queue] = usage.get(w.queue, ResourceVector()) + w.usage
    bound_queues = set()
    pending_by_id = {w.id: w for w in s.pending}
    for bind in decisions.binds:
        q = pending_by_id[bind.workload_id].queue
        usage[q] = usage.get(q, ResourceVector()) + placements_usage(bind.placements)
        bound_queues.add(q)
    for q in bound_queues:
        limit = s.queues[q].limit
        assert limit is None or usage[q].fits_within(limit), f"queue {q} beyond its limit"


def gangs_are_all_or_nothing_and_placements_match_requests(s: Scenario, decisions: Decisions) -> None:
    snap = ClusterSnapshot(s.nodes)
    pending_by_id = {w.id: w for w in s.pending}
    for bind in decisions.binds:
        w = pending_by_id[bind.workload_id]
        assert w.gang_size <= len(bind.placements) <= w.replica_count
        slots = Counter((p.role, p.ordinal) for p in bind.placements)
        assert all(n == 1 for n in slots.values()), "a replica bound twice"
        for p in bind.placements:
            check_placement(snap, w, p)


def check_placement(snap: ClusterSnapshot, w: PendingWorkload, p: ReplicaPlacement) -> None:
    (group,) = [g for g in w.groups if g.role == p.role]
    assert 0 <= p.ordinal < group.count
    req = group.request
    node = snap.nodes[snap.index_of(p.node)]
    assert (p.cpu_milli, p.memory_mib) == (req.cpu_milli, req.memory_mib)
    assert node.tolerated_by(req) and node.selected_by(req)
    cards = {c.index: c for c in node.gpus}
    assert all(req.gpu.allows_model(cards[g.index].model) for g in p.gpus)
    kind = req.gpu.kind
    if kind == "none":
        assert p.gpus == ()
    elif kind == "whole":
        assert len(p.gpus) == req.gpu.count and all(g.milli == MILLI_PER_GPU for g in p.gpus)
        assert len({g.index for g in p.gpus}) == req.gpu.count
        assert all(cards[g.index].mode in ("exclusive", "shared", "mps") for g in p.gpus)
    elif kind == "share":
        (g,) = p.gpus
        assert cards[g.index].mode.allows_shares
        assert g.milli == req.gpu.share_milli or not req.gpu.share_milli
    else:
        assert len(p.gpus) == req.gpu.count
        for g in p.gpus:
            assert g.mig_instance is not None
            assert cards[g.index].mig_instances[g.mig_instance].profile == req.gpu.mig_profile


def every_workload_is_bound_or_pending_with_a_reason_and_a_position(s: Scenario, decisions: Decisions) -> None:
    bound = [b.workload_id for b in decisions.binds]
    pending = [p.workload_id for p in decisions.pending]
    assert len(set(bound)) == len(bound) and len(set(pending)) == len(pending)
    assert set(bound) | set(pending) == {w.id for w in s.pending}
    assert not set(bound) & set(pending)
    reasons = {p.workload_id: p for p in decisions.pending}
    for items in queue_order(s.pending).values():
        waiting = [w.id for w in items if w.id in reasons]
        assert [reasons[i].position for i in waiting] == list(range(1, len(waiting) + 1))
    for p in decisions.pending:
        assert p.reason and p.reason != "not considered this cycle"


def victims_are_allowed_victims(s: Scenario, decisions: Decisions) -> None:
    running = {w.id: w for w in s.running}
    pending = {w.id: w for w in s.pending}
    assert s.profile.preemption or not decisions.preemptions
    for pre in decisions.preemptions:
        victim, preemptor = running[pre.victim_id], pending[pre.preemptor_id]
        assert victim.preemptible and not victim.terminating
        assert NOW - victim.start_time >= s.profile.min_runtime_s
        assert victim.queue != preemptor.queue or victim.priority < preemptor.priority
        assert preemptor.id not in decisions.bound()
        assert decisions.pending_by_id()[preemptor.id].nominated is not None
    assert len({p.victim_id for p in decisions.preemptions}) == len(decisions.preemptions)
    waiting = {p.workload_id for p in decisions.pending if p.reason == "waiting for the workloads it preempted to stop"}
    assert not waiting & {p.preemptor_id for p in decisions.preemptions}, "a waiting preemptor preempted again"
