"""The cycle's bookkeeping fast paths keep exactly the sums their plain formulas give.

- A lending queue's change moves the reserved total by the change itself (it reserves what it uses), instead of
  recomputing the queue's reserved amount before and after: the reserved total must stay the sum of every
  queue's reserved amount, and the used total the sum of their usage.
- A bound workload's usage is summed once per bind and handed to its RunningWorkload: it must equal the sum of
  its placements.
- A workload of one group counts its request's nominal amount (times its count) without the sum over groups.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from tests.builders import snapshot
from tests.scheduler_strategies import Scenario, pending_workloads, pool_nodes, scenarios

from gpupool.domain.nodes import Node
from gpupool.domain.queues import QueueSpec
from gpupool.domain.resources import ZERO, ResourceVector
from gpupool.scheduler.cycle import _Cycle
from gpupool.scheduler.demand import largest_card_memory, workload_demand
from gpupool.scheduler.queues import QuotaBook
from gpupool.scheduler.types import PendingWorkload, placements_usage

amounts = st.builds(ResourceVector, st.integers(0, 6), st.integers(0, 6), st.integers(0, 6))


def _assert_sums(book: QuotaBook) -> None:
    """The book's totals equal the plain sums over its queues (configured ones and those met on the way)."""
    assert book.used_total == sum(book.usage.values(), ZERO)
    assert book.reserved_total == sum((book._reserved(q) for q in book.usage), ZERO)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(amounts, st.booleans()), min_size=1, max_size=3),
       st.lists(st.tuples(st.integers(0, 3), amounts, st.booleans()), max_size=12))
def test_quota_book_totals_stay_the_sums_of_its_queues(queues: list[tuple[ResourceVector, bool]],
                                                        changes: list[tuple[int, ResourceVector, bool]]) -> None:
    """Lending and non-lending queues (and one not configured, `q3` where fewer are) gain and give back usage:
    after every change both totals equal their plain sums."""
    specs = {f"q{k}": QueueSpec(f"q{k}", guarantee, lend=lend) for k, (guarantee, lend) in enumerate(queues)}
    book = QuotaBook(specs, [], ResourceVector(100, 100, 100))
    _assert_sums(book)
    for k, amount, remove in changes:
        queue = f"q{k}"
        if remove:
            book.remove(queue, amount)
        else:
            book.add(queue, amount)
        _assert_sums(book)


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_cycle_usage_of_bound_work_equals_the_sum_of_its_placements(s: Scenario) -> None:
    """A cycle over random pools, running and pending work and queues (binds, reservations, nominations,
    preemptions): every started workload's usage is its placements' sum, and the book's totals their sums."""
    cycle = _Cycle(snapshot(s.nodes, s.running), list(s.running), s.queues, s.profile, 1000.0, None, None)
    cycle.run(list(s.pending))
    for started in cycle.started:
        assert started.usage == placements_usage(started.placements)
    _assert_sums(cycle.book)


@settings(max_examples=200, deadline=None)
@given(pool_nodes(), pending_workloads("w"))
def test_workload_demand_matches_the_sum_over_its_groups(nodes: list[Node], workload: PendingWorkload) -> None:
    """Workloads of one or two groups (counts 1-3; shares by memory count the largest card they may use)."""
    snap = snapshot(nodes)
    plain = ResourceVector()
    for group in workload.groups:  # the formula before its one-group path
        gpu = group.request.gpu
        card = None
        if gpu.kind == "share" and not gpu.share_milli:
            card = largest_card_memory(snap, gpu) or gpu.share_memory_mib
        plain = plain + group.request.nominal(card).scaled(group.count)
    assert workload_demand(workload, snap) == plain
