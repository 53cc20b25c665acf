"""Serving plans: memory terms, GPUs per replica, concurrency, speed bounds, input errors."""

from __future__ import annotations

import pytest

from gpupool.plan.catalog import Catalog, load_catalog
from gpupool.plan.errors import PlanInputError
from gpupool.plan.inference import ServeRequest, plan_serving
from gpupool.plan.precision import Precision
from gpupool.plan.units import GIB


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def _request(catalog: Catalog, **changes: object) -> ServeRequest:
    base = ServeRequest(model=catalog.model("llama-3-70b"), gpu=catalog.gpu("H100"), context=8192, batch=32)
    return ServeRequest(**{**vars(base), **changes})


def test_llama3_70b_on_h100s(catalog: Catalog) -> None:
    report = plan_serving(_request(catalog))
    # Weights: 70.6e9 x 2 B = 141.2 GB = 131.5 GiB.
    assert report.term("weights").value == pytest.approx(141.2e9)
    # KV per token: 2 x 80 layers x 8 kv heads x 128 head_dim x 2 B = 327,680 B = 320 KiB (GQA).
    assert report.term("kv_per_token").value == 327_680
    # Needed: 131.5 GiB + 32 x 8192 x 320 KiB (80 GiB) = 211.5 GiB; 2 GPUs hold 144 GiB, 4 hold 288 GiB.
    assert report.term("needed").value / GIB == pytest.approx(211.5, rel=1e-3)
    assert report.summary["gpus_per_replica"] == 4
    # Concurrent sequences: floor((288 - 131.5) GiB / 2.5 GiB) = floor(62.6) = 62.
    assert report.summary["max_sequences"] == 62
    # Decode at batch 1: 141.2e9 B / (4 x 3.35e12 B/s) = 10.5 ms.
    assert report.term("decode_latency").value == pytest.approx(141.2e9 / 13.4e12)
    assert report.summary["fits"] is True


def test_a_fixed_replica_that_is_too_small_says_so(catalog: Catalog) -> None:
    report = plan_serving(_request(catalog, gpus_per_replica=2))
    assert report.summary["fits"] is False
    assert report.notes[0].startswith("Does not fit: 211.50 GiB needed, 144.00 GiB usable")


def test_throughput_bound_is_memory_or_compute_bound(catalog: Catalog) -> None:
    # Batch 1: reading 141.2 GB dominates; tokens/s <= 1 / step. Batch 1024 at short context: compute
    # (2 x 70.6e9 x 1024 FLOPs / (4 x 989.4e12)) = 36.5 ms exceeds the weight read (10.5 ms + KV).
    small = plan_serving(_request(catalog, batch=1, context=128))
    assert small.term("tokens_per_s").value == pytest.approx(1 / small.term("decode_step").value)
    big = plan_serving(_request(catalog, batch=1024, context=128, gpus_per_replica=4))
    assert big.term("decode_step").value == pytest.approx(2 * 70.6e9 * 1024 / (4 * 989.4e12))


def test_quantised_weights_and_kv_cache_shrink_memory(catalog: Catalog) -> None:
    fp8 = plan_serving(_request(catalog, precision=Precision.FP8, kv_precision=Precision.FP8))
    assert fp8.term("weights").value == pytest.approx(70.6e9)
    assert fp8.term("kv_per_token").value == 163_840
    assert fp8.summary["gpus_per_replica"] == 2  # 65.8 GiB + 40 GiB of KV <= 144 GiB


def test_mixture_of_experts_uses_active_parameters_for_speed_only(catalog: Catalog) -> None:
    report = plan_serving(_request(catalog, model=catalog.model("deepseek-v3"), gpu=catalog.gpu("H200"),
                                   precision=Precision.FP8, context=4096, batch=8))
    assert report.term("weights").value == pytest.approx(671e9)        # all experts are held
    assert report.term("kv_per_token").value == 61 * 576 * 2           # MLA latent cache, 70,272 B
    assert report.summary["gpus_per_replica"] == 8                     # 625 GiB / (141 x 0.9) -> 8
    assert report.term("decode_latency").value == pytest.approx(37e9 / (8 * 4.8e12))
    assert any("Mixture of experts" in note for note in report.notes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"context": 0}, "--context and --batch"),
        ({"prompt": 10_000}, "--prompt 10000 must be between 1 and --context 8192"),
        ({"memory_fraction": 0.0}, "--memory-fraction"),
        ({"gpus_per_replica": 0}, "at least 1"),
        ({"batch": 10**9}, "does not fit 1024 x H100-SXM"),
    ],
)
def test_bad_inputs_are_named(catalog: Catalog, changes: dict[str, object], message: str) -> None:
    with pytest.raises(PlanInputError, match=message):
        plan_serving(_request(catalog, **changes))
