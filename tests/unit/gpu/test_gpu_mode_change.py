"""Which sharing-mode changes running work allows (gpu.sharing.mode_change_conflict)."""

from __future__ import annotations

import pytest

from gpupool.domain.nodes import Gpu, MigInstance
from gpupool.domain.resources import SharingMode
from gpupool.gpu.sharing import mode_change_conflict
from gpupool.scheduler.types import GpuAssignment

E, S, P, M = SharingMode.EXCLUSIVE, SharingMode.SHARED, SharingMode.MPS, SharingMode.MIG
WHOLE = GpuAssignment(0, 1000)
SHARE = GpuAssignment(0, 250, 10240)
BY_MEMORY = GpuAssignment(0, 1000, 20480)  # all the compute, part of the memory: still a share


def card(mode: SharingMode, instances: int = 0) -> Gpu:
    return Gpu(0, "A100-SXM4-80GB", 81920, mode, uuid="GPU-0",
               mig_instances=tuple(MigInstance("1g.10gb", f"MIG-{k}") for k in range(instances)))


@pytest.mark.parametrize(("current", "new", "running", "problem"), [
    (E, S, [], None),  # idle: anything goes
    (S, M, [], None),
    (M, E, [], None),  # mig mode without instances (e.g. waiting for a reset)
    (S, S, [SHARE], None),  # no change
    (E, S, [WHOLE], None),  # a whole card stays whole
    (S, E, [WHOLE], None),
    (S, E, [SHARE], "holding shares of it"),
    (S, E, [BY_MEMORY], "holding shares of it"),
    (S, P, [SHARE], "not MPS clients"),
    (P, S, [SHARE], "they are MPS clients"),
    (E, M, [WHOLE], "to or from mig mode needs the card idle"),
])
def test_mode_changes_under_running_work(current: SharingMode, new: SharingMode, running: list[GpuAssignment],
                                         problem: str | None) -> None:
    found = mode_change_conflict(card(current), new, running)
    assert found is None if problem is None else problem in (found or "")


def test_a_partitioned_card_leaves_mig_only_through_set_mig() -> None:
    assert "set-mig NODE GPU none" in (mode_change_conflict(card(M, 2), E, []) or "")
    assert mode_change_conflict(card(M, 2), M, []) is None
