"""Each published figure the planner promises to reproduce, within 2%, with its source.

A check states the source and the arithmetic next to the assertion, so a reader can redo it by hand.
"""

from __future__ import annotations

import pytest

from gpupool.plan.catalog import Catalog, load_catalog
from gpupool.plan.compute import gpus_for_deadline, pf_days, training_flops, training_seconds
from gpupool.plan.inference import ServeRequest, decode_seconds_lower_bound, kv_bytes_per_token, plan_serving
from gpupool.plan.memory import (
    Layout,
    Recompute,
    TrainingSetup,
    activation_bytes_per_layer,
    model_state_terms,
)
from gpupool.plan.mig import MigRequest, plan_mig
from gpupool.plan.models import ModelShape, params_from_shape
from gpupool.plan.precision import Precision
from gpupool.plan.units import GIB

WITHIN = 0.02
DAY = 86400.0


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


@pytest.mark.parametrize(
    ("stage", "published_gb"),
    [
        # Rajbhandari et al. 2020 (ZeRO), Figure 1: Psi = 7.5B parameters, N_d = 64, K = 12.
        (0, 120.0),  # (2 + 2 + 12) x 7.5B = 120 GB
        (1, 31.4),   # 2 x 7.5 + 2 x 7.5 + 12 x 7.5 / 64 = 15 + 15 + 1.41 = 31.4 GB
        (2, 16.6),   # 2 x 7.5 + (2 + 12) x 7.5 / 64 = 15 + 1.64 = 16.6 GB
        (3, 1.9),    # 16 x 7.5 / 64 = 1.875 GB
    ],
)
def test_zero_paper_model_states_per_gpu(stage: int, published_gb: float) -> None:
    model = ModelShape(name="zero-7.5b", params=7.5e9, layers=36, hidden=4096, heads=32)
    setup = TrainingSetup(model=model, seq=1, micro_batch=1, layout=Layout(dp=64, zero=stage))
    total = sum(term.value for term in model_state_terms(model.params, setup))
    assert total / 1e9 == pytest.approx(published_gb, rel=WITHIN)


def test_activation_formula_and_selective_saving_for_gpt3() -> None:
    # Korthikanti et al. 2022, section 5: for GPT-3 175B (a=96, s=2048, h=12288) 5as/h = 80, so a layer
    # holds s b h (34 + 80) bytes; selective recomputation keeps s b h 34, a 70% saving (1 - 34/114).
    s, b, h, a = 2048, 1, 12288, 96
    full, _ = activation_bytes_per_layer(
        seq=s, micro_batch=b, hidden=h, heads=a, tp=1, sequence_parallel=False, recompute=Recompute.NONE
    )
    selective, _ = activation_bytes_per_layer(
        seq=s, micro_batch=b, hidden=h, heads=a, tp=1, sequence_parallel=False, recompute=Recompute.SELECTIVE
    )
    assert full == s * b * h * (34 + 80)
    assert 1 - selective / full == pytest.approx(0.70, rel=WITHIN)


@pytest.mark.parametrize(
    ("layers", "hidden", "published_billions"),
    [
        # Narayanan et al. 2021, Table 1 (V = 51,200, s = 2,048): 36 x 4096 -> 7.5B; 128 x 25600 -> 1008.0B.
        (36, 4096, 7.5),
        (128, 25600, 1008.0),
    ],
)
def test_parameter_count_from_shape(layers: int, hidden: int, published_billions: float) -> None:
    billions = params_from_shape(layers, hidden, 51200, 2048) / 1e9
    assert billions == pytest.approx(published_billions, rel=WITHIN)


def test_gpt3_shape_gives_175b_parameters(catalog: Catalog) -> None:
    # Brown et al. 2020, Table 2.1: 96 layers, d_model 12,288 -> 175.0B parameters
    # (V = 50,257, n_ctx = 2,048).
    gpt3 = catalog.model("gpt-3-175b")
    assert gpt3.layers is not None and gpt3.hidden is not None
    assert params_from_shape(gpt3.layers, gpt3.hidden, 50257, 2048) == pytest.approx(175e9, rel=WITHIN)


def test_gpt3_training_compute_and_time(catalog: Catalog) -> None:
    # Issue 6 check, from Brown et al. 2020 (Table D.1: 3.64E+03 PF-days for GPT-3 175B on 300B tokens):
    # 6 x 175e9 x 300e9 = 3.15e23 FLOPs = 3.15e23 / (1e15 x 86,400) = 3,646 PF-days.
    flops = training_flops(175e9, 300e9, Recompute.SELECTIVE).value
    assert flops == pytest.approx(3.15e23, rel=WITHIN)
    assert pf_days(flops).value == pytest.approx(3640, rel=WITHIN)
    # 64 A100 at 312 TFLOPS: 3.15e23 / (64 x 312e12) = 1.577e7 s = 182.5 days at 100% MFU, a year at 50%.
    peak, field = catalog.gpu("A100-80GB").peak_flops(Precision.BF16)
    assert (peak, field) == (312e12, "bf16_tflops")
    assert training_seconds(flops, 64, peak, 1.0) / DAY == pytest.approx(182, rel=WITHIN)
    assert training_seconds(flops, 64, peak, 0.5) / DAY == pytest.approx(365, rel=WITHIN)
    # And back: to finish in 182.5 days at 100% MFU takes the same 64 GPUs.
    assert gpus_for_deadline(flops, 182.6 * DAY, peak, 1.0) == 64


def test_full_recompute_costs_eight_nd() -> None:
    # Narayanan et al. 2021, section 5.1: recomputation adds a forward pass, 6ND -> 8ND.
    assert training_flops(175e9, 300e9, Recompute.FULL).value == pytest.approx(4.2e23, rel=WITHIN)


def test_moe_decode_latency_bound_on_h20_and_cpu(catalog: Catalog) -> None:
    # Issue 6 check: 37B active parameters in FP8 (1 byte) read per token.
    # H20 at 4.0 TB/s: 37e9 / 4.0e12 = 9.25 ms (~9 ms); a CPU at 64 GB/s: 37e9 / 64e9 = 578 ms.
    h20 = catalog.gpu("H20")
    active_bytes = 37e9 * Precision.FP8.bytes
    assert h20.bandwidth_bytes_per_s == 4.0e12
    on_h20 = decode_seconds_lower_bound(active_bytes, h20.bandwidth_bytes_per_s)
    assert on_h20 == pytest.approx(9.25e-3, rel=WITHIN)
    assert decode_seconds_lower_bound(active_bytes, 64e9) == pytest.approx(0.578, rel=WITHIN)


def test_moe_decode_latency_through_the_serving_plan(catalog: Catalog) -> None:
    # The same check through `plan serve --model deepseek-v3 --gpu 1xH20 --precision fp8`:
    # DeepSeek-V3 has 37B active parameters (DeepSeek-V3 Technical Report, section 4.2).
    request = ServeRequest(
        model=catalog.model("deepseek-v3"), gpu=catalog.gpu("H20"), context=4096, precision=Precision.FP8,
        gpus_per_replica=1,
    )
    assert plan_serving(request).term("decode_latency").value == pytest.approx(9.25e-3, rel=WITHIN)
    cpu = ServeRequest(**{**vars(request), "bandwidth": 64e9})
    assert plan_serving(cpu).term("decode_latency").value == pytest.approx(0.578, rel=WITHIN)


def test_kv_cache_per_token_of_opt_13b() -> None:
    # Kwon et al. 2023 (vLLM, PagedAttention), section 3: OPT-13B needs 2 x 5120 x 40 x 2 bytes = 800 KB
    # of KV cache per token (2 for key and value, hidden 5120, 40 layers, FP16).
    opt13b = ModelShape(name="opt-13b", params=13e9, layers=40, hidden=5120, heads=40)
    per_token, _ = kv_bytes_per_token(opt13b, Precision.FP16)
    assert per_token == pytest.approx(800 * 1024, rel=WITHIN)


def test_mig_instances_of_28_sms_and_10_gb_on_an_a100_40gb(catalog: Catalog) -> None:
    # Issue 6 check: an A100 with 108 SMs and 40 GB; instances of 28 SMs and 10 GB -> at most 3.
    # NVIDIA MIG User Guide: 7 compute slices of 14 SMs, 8 memory slices of 5 GB; 28 SMs = 2 compute slices,
    # 10 GB = 2 memory slices; min(floor(7/2), floor(8/2)) = min(3, 4) = 3: the 2g.10gb profile, 3 per GPU.
    a100 = catalog.gpu("A100-40GB")
    assert a100.sm_count == 108
    report = plan_mig(a100, MigRequest(sms=28, memory_bytes=10 * GIB))
    assert report.summary["instances"] == 3
    assert report.summary["profile"] == "2g.10gb"
    assert report.term("by_compute").value == 3
    assert report.term("by_memory").value == 4
    # 10 GB written in decimal units (9.3 GiB) gives the same answer.
    assert plan_mig(a100, MigRequest(sms=28, memory_bytes=10e9)).summary["instances"] == 3
