"""Shape keys: workloads with identical requests and gang size share one key (the scheduler's equivalence caches
look them up several times per workload and cycle); different requests never do."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tests.builders import job

from gpupool.scheduler import types
from gpupool.scheduler.types import ShapeKey, shape_key_of


def test_equal_requests_share_one_key_object_and_different_ones_differ() -> None:
    first, second = job("a").gpu(1).build(), job("b").gpu(1).build()
    assert first.shape_key() is second.shape_key()
    assert job("c").gpu(2).build().shape_key() != first.shape_key()
    assert job("d").replicas(2, gpu=1).build().shape_key() != first.shape_key()
    elastic = replace(job("e").replicas(4, gpu=1).build(), min_available=2)
    assert elastic.shape_key() != job("f").replicas(4, gpu=1).build().shape_key()  # the gang size counts
    assert elastic.replica_count == 4 and elastic.gang_size == 2


def test_keys_made_on_both_sides_of_a_drop_still_compare_by_content(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(types, "_SHAPES_KEPT", 2)
    before = job("a").gpu(1).build().shape_key()
    for count in (2, 3, 4):  # beyond the limit: the kept keys are dropped
        shape_key_of((("other", count),))
    after = job("b").gpu(1).build().shape_key()
    assert after is not before and after == before and hash(after) == hash(before)
    assert {before: "found"}[after] == "found"
    assert ShapeKey((1,)) != (1,) and len(types._shapes) <= 2
