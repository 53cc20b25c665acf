"""Training plans: each term for a fixed layout, the layout search, compute, and input errors."""

from __future__ import annotations

import pytest

from gpupool.plan.catalog import Catalog, load_catalog, parse_gpu_spec
from gpupool.plan.errors import PlanInputError
from gpupool.plan.memory import Recompute
from gpupool.plan.models import ShapeArgs, model_from_args
from gpupool.plan.parallel import LayoutConstraints
from gpupool.plan.precision import Precision
from gpupool.plan.train import TrainRequest, plan_training


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def _request(catalog: Catalog, model: str, gpus: str, **changes: object) -> TrainRequest:
    base = TrainRequest(model=catalog.model(model), gpus=parse_gpu_spec(gpus, catalog), seq=4096)
    return TrainRequest(**{**vars(base), **changes})


def test_each_term_of_a_fixed_layout(catalog: Catalog) -> None:
    # Llama-3-8B (8.03B params, 32 layers, h=4096, a=32) on 8 x A100-80GB, TP 1, PP 1, DP 8, ZeRO-1,
    # bf16 Adam.
    fixed = LayoutConstraints(tp=1, pp=1, zero=1)
    request = _request(catalog, "llama-3-8b", "8xA100-80GB", constraints=fixed)
    report = plan_training(request)
    p = 8.03e9
    assert report.term("weights").value == pytest.approx(2 * p)        # 16.06 GB, not partitioned
    assert report.term("gradients").value == pytest.approx(2 * p)      # 16.06 GB, not partitioned
    assert report.term("optimizer").value == pytest.approx(12 * p / 8)  # 12.05 GB over 8 ranks
    per_layer = 4096 * 1 * 4096 * 34                                    # s b h 34 (selective) = 570.4 MB
    assert report.term("activations_per_layer").value == per_layer
    assert report.term("activations").value == 32 * per_layer          # 18.25 GB
    assert report.term("total").value == pytest.approx(4 * p + 1.5 * p + 32 * per_layer)  # 62.4 GB
    assert report.summary["fits"] is True                               # 58.1 GiB <= 0.9 x 80 GiB


def test_the_planner_picks_the_smallest_layout_that_fits(catalog: Catalog) -> None:
    # ZeRO-0 needs 16 x 8.03e9 = 128 GB of model states: too much. ZeRO-1 (62.4 GB = 58.1 GiB) fits 72 GiB.
    report = plan_training(_request(catalog, "llama-3-8b", "8xA100-80GB"))
    assert report.summary["layout"] == {"tp": 1, "pp": 1, "dp": 8, "zero": 1, "sequence_parallel": True}


def test_a_fixed_zero_stage_leaves_the_rest_to_the_planner(catalog: Catalog) -> None:
    # ZeRO-0 fixed: model states only shrink with tp x pp; 128 GB / 2 + activations / 2 (SP) = 73.3 GB
    # = 68.3 GiB fits, so TP 2 (tensor parallel is preferred to a pipeline of the same size).
    fixed = LayoutConstraints(zero=0)
    report = plan_training(_request(catalog, "llama-3-8b", "8xA100-80GB", constraints=fixed))
    assert report.summary["layout"]["tp"] == 2 and report.summary["layout"]["pp"] == 1
    assert report.summary["fits"] is True


def test_a_plan_that_does_not_fit_says_how_many_gpus_would(catalog: Catalog) -> None:
    # Llama-2-70B: 16 x 69e9 = 1.1 TB of model states cannot fit 8 x 80 GiB whatever the layout.
    report = plan_training(_request(catalog, "llama-2-70b", "8xA100-80GB"))
    assert report.summary["fits"] is False
    assert report.summary["fewest_gpus_that_fit"] == 32
    assert any("Does not fit" in note for note in report.notes)


def test_compute_time_and_deadline(catalog: Catalog) -> None:
    # 6 x 8.03e9 x 1e12 tokens = 4.82e22 FLOPs on 8 x 312 TFLOPS at 40%: 4.82e22 / 9.98e14 = 4.83e7 s.
    request = _request(catalog, "llama-3-8b", "8xA100-80GB", tokens=1e12, deadline_seconds=30 * 86400.0)
    report = plan_training(request)
    assert report.term("flops").value == pytest.approx(6 * 8.03e9 * 1e12)
    assert report.term("time").value == pytest.approx(6 * 8.03e9 * 1e12 / (8 * 312e12 * 0.4))
    # GPUs for 30 days: ceil(4.818e22 / (2.592e6 s x 312e12 x 0.4)) = ceil(148.9) = 149.
    assert report.summary["gpus_for_deadline"] == 149


def test_full_recompute_trades_memory_for_compute(catalog: Catalog) -> None:
    selective = plan_training(_request(catalog, "llama-3-8b", "8xA100-80GB", tokens=1e9))
    full = plan_training(_request(catalog, "llama-3-8b", "8xA100-80GB", tokens=1e9, recompute=Recompute.FULL))
    assert full.term("activations").value < selective.term("activations").value
    assert full.term("flops").value == pytest.approx(selective.term("flops").value * 8 / 6)


def test_a_parameter_count_alone_gets_an_estimated_shape(catalog: Catalog) -> None:
    # 7B: layers = round((7e9 / (12 x 128^2))^(1/3)) = 33; hidden = sqrt(7e9 / (12 x 33)) = 4204 -> 4096.
    model = model_from_args(ShapeArgs(params=7e9))
    assert (model.layers, model.hidden, model.heads, model.estimated) == (33, 4096, 32, True)
    request = TrainRequest(model=model, gpus=parse_gpu_spec("8xA100-80GB", catalog), seq=4096,
                           constraints=LayoutConstraints(zero=2))
    report = plan_training(request)
    assert report.summary["fits"] is True
    assert report.notes[0].startswith("Model shape estimated from 7B parameters")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seq": 0}, "--seq and --micro-batch"),
        ({"precision": Precision.FP8}, "--precision fp8 is not a training precision"),
        ({"constraints": LayoutConstraints(tp=3)}, "--tp 3 does not divide the model's 32 attention heads"),
        ({"constraints": LayoutConstraints(pp=64)},
         "--pp 64 is more pipeline stages than the model's 32 layers"),
        ({"constraints": LayoutConstraints(tp=16)}, "cannot be split into tp x pp = 16"),
        ({"constraints": LayoutConstraints(zero=4)}, "--zero must be 0, 1, 2 or 3"),
        ({"memory_fraction": 1.5}, "--memory-fraction"),
        ({"tokens": 1e9, "mfu": 0.0}, "--mfu"),
    ],
)
def test_inconsistent_inputs_are_named(catalog: Catalog, changes: dict[str, object], message: str) -> None:
    with pytest.raises(PlanInputError, match=message):
        plan_training(_request(catalog, "llama-3-8b", "8xA100-80GB", **changes))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (ShapeArgs(), "no model given"),
        (ShapeArgs(layers=32), "also give --hidden, --heads"),
        (ShapeArgs(params=7e9, layers=80, hidden=8192, heads=64), "inconsistent model: --params 7B"),
        (ShapeArgs(layers=32, hidden=4096, heads=30), "--hidden 4096 is not a multiple of --heads 30"),
        (ShapeArgs(layers=32, hidden=4096, heads=32, kv_heads=5), "not a multiple of --kv-heads 5"),
        (ShapeArgs(params=7e9, active_params=8e9), "--active-params 8B exceeds --params 7B"),
    ],
)
def test_model_inputs_are_checked(args: ShapeArgs, message: str) -> None:
    with pytest.raises(PlanInputError, match=message):
        model_from_args(args)
