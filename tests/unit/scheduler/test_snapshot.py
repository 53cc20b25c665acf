"""ClusterSnapshot: free capacity per node and per GPU, assume/forget, what-if with exact restore, clones."""

from __future__ import annotations

import numpy as np
import pytest
from tests.builders import node, on, snapshot_state

from gpupool.domain.resources import ResourceVector
from gpupool.scheduler.snapshot import ClusterSnapshot, OverCommitError
from gpupool.scheduler.types import GpuAssignment, ReplicaPlacement


def cluster() -> ClusterSnapshot:
    return ClusterSnapshot([
        node("n2").cpu(16).memory("64GiB").gpus(2, "A100", memory="40GiB", mode="shared").build(),
        node("n1").cpu(32).memory("128GiB").gpus(4, "A100", memory="80GiB").build(),
        node("c1").cpu(8).memory("32GiB").build(),
        node("m1").cpu(16).memory("64GiB").mig("A100", ["3g.40gb", "1g.10gb", "1g.10gb"]).build(),
    ])


def test_nodes_are_rows_in_name_order_with_their_capacity() -> None:
    snap = cluster()
    assert [n.name for n in snap.nodes] == ["c1", "m1", "n1", "n2"]
    # 8+16+32+16 = 72 cores; 32+64+128+64 = 288 GiB; GPUs: 0 + 1 (MIG card) + 4 + 2 = 7 cards = 7000 milli
    assert snap.total_capacity() == ResourceVector(72000, 288 * 1024, 7000)
    assert snap.free_on(snap.index_of("n1")) == ResourceVector(32000, 128 * 1024, 4000)
    assert snap.width == 4  # GPU columns of the widest node
    np.testing.assert_array_equal(snap.free_milli[snap.index_of("n2")], [1000, 1000, 0, 0])
    np.testing.assert_array_equal(snap.free_gmem[snap.index_of("n2")], [40960, 40960, 0, 0])


def test_card_capabilities_follow_the_sharing_mode() -> None:
    snap = cluster()
    n1, n2, m1 = (snap.index_of(n) for n in ("n1", "n2", "m1"))
    assert snap.whole_ok[n1, :4].all() and not snap.share_ok[n1].any()      # exclusive: whole cards only
    assert snap.whole_ok[n2, :2].all() and snap.share_ok[n2, :2].all()      # shared: both
    assert not snap.whole_ok[m1].any() and not snap.share_ok[m1].any()      # MIG: only its instances
    assert snap.mig_free_instances(m1, "1g.10gb") == [(0, 1), (0, 2)]


def test_assume_takes_and_forget_gives_back_per_node_and_per_card() -> None:
    snap = cluster()
    row = snap.index_of("n2")
    share = on("n2", cpu=4, memory="8GiB", gpus={1: 300}, gpu_memory={1: "12GiB"})
    snap.assume(share)
    # n2: 16 - 4 = 12 cores, 64 - 8 = 56 GiB; card 1: 1000 - 300 = 700 milli, 40 - 12 = 28 GiB
    assert snap.free_on(row) == ResourceVector(12000, 56 * 1024, 1700)
    assert (snap.free_milli[row, 1], snap.free_gmem[row, 1]) == (700, 28 * 1024)
    assert snap.full_free[row] == 1            # only card 0 is still fully free
    assert snap.share_max_free[row] == 1000    # the emptiest shareable card
    snap.forget(share)
    assert snap.free_on(row) == ResourceVector(16000, 64 * 1024, 2000)
    assert snap.full_free[row] == 2


@pytest.mark.parametrize(("placement", "why"), [
    (on("n1", cpu=33), "33 cores on a 32-core node"),
    (on("n1", memory="129GiB"), "129 GiB on a 128 GiB node"),
    (on("n2", gpus={0: 1001}), "1001 milli on a 1000-milli card"),
    (on("n2", gpus={0: 100}, gpu_memory={0: "41GiB"}), "41 GiB on a 40 GiB card"),
    (on("n2", gpus={7: 100}), "card 7 does not exist"),
    (on("ghost"), "unknown node"),
])
def test_assume_refuses_what_does_not_fit(placement: ReplicaPlacement, why: str) -> None:
    snap = cluster()
    before = snapshot_state(snap)
    assert not snap.fits(placement), why
    with pytest.raises(OverCommitError, match="does not fit"):
        snap.assume(placement)
    assert before == snapshot_state(snap)


@pytest.mark.parametrize("placement", [
    on("ghost", gpus={0: 1000}),                                             # a node that left the pool
    on("n2", cpu=0, memory="0GiB", gpus={7: 1000}),                          # a card n2 no longer reports
    ReplicaPlacement("n2", 0, 0, (GpuAssignment(0, 0, 0, mig_instance=3),)),  # a MIG instance its card lacks
])
def test_what_a_forced_placement_names_that_the_snapshot_lacks_takes_nothing(placement: ReplicaPlacement) -> None:
    snap = cluster()
    before = snapshot_state(snap)
    snap.assume(placement, force=True)  # running work loaded as it is
    assert before == snapshot_state(snap)
    snap.forget(placement)  # and given back when it ends or is preempted
    assert before == snapshot_state(snap)


def test_a_card_taken_twice_is_an_over_commit() -> None:
    snap = cluster()
    snap.assume(on("n2", gpus={0: 600}))
    with pytest.raises(OverCommitError):
        snap.assume(on("n2", gpus={0: 500}))  # 600 + 500 > 1000
    snap.assume(on("n2", gpus={0: 400}))      # 600 + 400 = 1000: exactly full is fine
    assert snap.free_milli[snap.index_of("n2"), 0] == 0


def test_mig_instances_are_taken_one_by_one() -> None:
    snap = cluster()
    row = snap.index_of("m1")
    inst = ReplicaPlacement("m1", 1000, 1024, (GpuAssignment(0, 143, 10240, mig_instance=1),))
    snap.assume(inst)
    assert snap.mig_free_instances(row, "1g.10gb") == [(0, 2)]
    assert not snap.fits(inst)                 # the same instance cannot be taken twice
    snap.forget(inst)
    assert snap.mig_free_instances(row, "1g.10gb") == [(0, 1), (0, 2)]


def test_force_loads_running_work_that_a_shrunken_node_no_longer_holds() -> None:
    snap = cluster()
    snap.assume(on("c1", cpu=10), force=True)  # 8 cores, 10 taken: -2 free, nothing else fits there
    assert snap.free_cpu[snap.index_of("c1")] == -2000
    assert not snap.fits(on("c1", cpu="1m"))


def test_cordoned_nodes_take_nothing_and_count_nothing() -> None:
    snap = ClusterSnapshot([node("n1").gpus(2).build(), node("n2").gpus(2).cordoned().build()])
    assert not snap.fits(on("n2"))
    assert snap.total_capacity().gpu_milli == 2000  # only n1's 2 cards


def test_trial_and_what_if_restore_every_array_exactly() -> None:
    snap = cluster()
    snap.assume(on("n1", cpu=8, gpus={0: 1000, 1: 1000}, gpu_memory={0: "80GiB", 1: "80GiB"}))
    snap.assume(on("n2", gpus={0: 250}, gpu_memory={0: "10GiB"}))
    snap.assume(ReplicaPlacement("m1", 1000, 1024, (GpuAssignment(0, 429, 40960, mig_instance=0),)))
    running = [on("n1", cpu=8, gpus={0: 1000, 1: 1000}, gpu_memory={0: "80GiB", 1: "80GiB"}),
               ReplicaPlacement("m1", 1000, 1024, (GpuAssignment(0, 429, 40960, mig_instance=0),))]
    before = snapshot_state(snap)

    restore = snap.what_if_removed(running)
    assert snap.full_free[snap.index_of("n1")] == 4
    assert snap.mig_free_instances(snap.index_of("m1"), "3g.40gb") == [(0, 0)]
    restore()
    assert before == snapshot_state(snap)

    restore = snap.trial([on("n1", gpus={2: 1000}), on("n2", gpus={1: 500}), on("c1", cpu=8)])
    assert snap.free_cpu[snap.index_of("c1")] == 0
    restore()
    assert before == snapshot_state(snap)


def test_a_failed_trial_leaves_the_snapshot_unchanged() -> None:
    snap = cluster()
    before = snapshot_state(snap)
    with pytest.raises(OverCommitError):
        snap.trial([on("n1", gpus={0: 1000}), on("n1", gpus={0: 1000})])  # the second takes card 0 again
    assert before == snapshot_state(snap)


def test_a_clone_is_independent() -> None:
    snap = cluster()
    copy = snap.clone()
    copy.assume(on("n1", cpu=4, gpus={0: 1000}))
    copy.assume(ReplicaPlacement("m1", 1000, 1024, (GpuAssignment(0, 143, 10240, mig_instance=2),)))
    assert snap.free_on(snap.index_of("n1")) == ResourceVector(32000, 128 * 1024, 4000)
    assert snap.mig_free_instances(snap.index_of("m1"), "1g.10gb") == [(0, 1), (0, 2)]
    assert copy.mig_free_instances(copy.index_of("m1"), "1g.10gb") == [(0, 1)]
    snap.assume(on("n2", gpus={0: 500}))
    assert copy.free_milli[copy.index_of("n2"), 0] == 1000


def test_versions_change_with_every_change_and_are_unique_across_clones() -> None:
    snap = cluster()
    n1, n2 = snap.index_of("n1"), snap.index_of("n2")
    v0 = snap.version.copy()
    placement = on("n1", gpus={0: 1000})
    snap.assume(placement)
    assert snap.version[n1] != v0[n1] and snap.version[n2] == v0[n2]  # only the touched node
    v1 = snap.version[n1]
    snap.forget(placement)
    assert snap.version[n1] not in (v0[n1], v1)  # a new stamp, even though the capacity is back
    copy = snap.clone()
    assert (copy.version == snap.version).all()   # same state, same stamps
    copy.assume(placement)
    snap.assume(placement)
    assert copy.version[n1] != snap.version[n1]  # equal capacity, but stamps never collide across clones
    assert snap.changes == 3
