"""Whatever the input, the planner answers or raises PlanInputError: never another exception.

This is what lets the command line promise a one-line error instead of a traceback.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpupool.plan.catalog import catalog_from_data, load_catalog, parse_gpu_spec
from gpupool.plan.errors import PlanInputError
from gpupool.plan.inference import ServeRequest, plan_serving
from gpupool.plan.memory import Optimizer, Recompute
from gpupool.plan.mig import MigRequest, plan_mig
from gpupool.plan.models import ShapeArgs, model_from_args
from gpupool.plan.parallel import LayoutConstraints
from gpupool.plan.precision import Precision
from gpupool.plan.train import TrainRequest, plan_training

CATALOG = load_catalog()
JUNK = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
GPU_KEYS = ("name", "aliases", "memory_gib", "memory_bandwidth_gbps", "bf16_tflops", "sm_count", "mig")
MODEL_KEYS = ("name", "aliases", "params", "active_params", "layers", "hidden", "heads", "kv_heads")
SMALL = st.integers(-2, 300)
OPTIONAL_SMALL = st.none() | SMALL


def _answers_or_input_error(call: Any) -> None:
    try:
        call()
    except PlanInputError as exc:
        assert str(exc)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.dictionaries(st.sampled_from(GPU_KEYS), JUNK), st.dictionaries(st.sampled_from(MODEL_KEYS), JUNK))
def test_any_catalog_file_loads_or_is_an_input_error(gpu: dict[str, Any], model: dict[str, Any]) -> None:
    _answers_or_input_error(lambda: catalog_from_data([({"gpus": [gpu], "models": [model]}, "user.yaml")]))


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(JUNK)
def test_any_document_loads_or_is_an_input_error(document: Any) -> None:
    _answers_or_input_error(lambda: catalog_from_data([(document, "user.yaml")]))


TRAINING = st.fixed_dictionaries({
    "gpus": st.sampled_from(["8xA100-80GB", "1xH100", "3xL4", "64xH200"]),
    "seq": SMALL, "micro_batch": SMALL, "tp": OPTIONAL_SMALL, "pp": OPTIONAL_SMALL, "zero": OPTIONAL_SMALL,
    "gpus_per_node": st.integers(-1, 16), "precision": st.sampled_from(list(Precision)),
    "recompute": st.sampled_from(list(Recompute)), "memory_fraction": st.floats(-1, 2, allow_nan=False),
    "tokens": st.none() | st.floats(-1e9, 1e13, allow_nan=False),
    "deadline_seconds": st.none() | st.floats(-10, 1e8, allow_nan=False),
})
SERVING = st.fixed_dictionaries({
    "shape": st.builds(
        ShapeArgs, params=st.none() | st.floats(-1e9, 1e12, allow_nan=False), layers=OPTIONAL_SMALL,
        hidden=OPTIONAL_SMALL, heads=OPTIONAL_SMALL, kv_heads=OPTIONAL_SMALL, vocab=OPTIONAL_SMALL,
    ),
    "context": SMALL, "batch": SMALL, "gpus_per_replica": OPTIONAL_SMALL,
    "bandwidth": st.none() | st.floats(-1, 1e13, allow_nan=False),
})


@settings(max_examples=60, deadline=None)
@given(TRAINING)
def test_any_training_question_is_answered_or_an_input_error(args: dict[str, Any]) -> None:
    def call() -> None:
        constraints = LayoutConstraints(
            tp=args["tp"], pp=args["pp"], zero=args["zero"], gpus_per_node=args["gpus_per_node"]
        )
        plan_training(TrainRequest(
            model=CATALOG.model("llama-3-8b"), gpus=parse_gpu_spec(args["gpus"], CATALOG), seq=args["seq"],
            micro_batch=args["micro_batch"], precision=args["precision"], optimizer=Optimizer.ADAM,
            recompute=args["recompute"], memory_fraction=args["memory_fraction"], constraints=constraints,
            tokens=args["tokens"], deadline_seconds=args["deadline_seconds"],
        ))

    _answers_or_input_error(call)


@settings(max_examples=60, deadline=None)
@given(SERVING)
def test_any_serving_question_is_answered_or_an_input_error(args: dict[str, Any]) -> None:
    def call() -> None:
        plan_serving(ServeRequest(
            model=model_from_args(args["shape"]), gpu=CATALOG.gpu("H100"), context=args["context"],
            batch=args["batch"], gpus_per_replica=args["gpus_per_replica"], bandwidth=args["bandwidth"],
        ))

    _answers_or_input_error(call)


@given(st.sampled_from(["A100-40GB", "H20", "L4", "H200"]), OPTIONAL_SMALL, OPTIONAL_SMALL,
       st.none() | st.floats(-1, 1e12, allow_nan=False))
def test_any_mig_question_is_answered_or_an_input_error(
    gpu: str, sms: int | None, slices: int | None, memory: float | None
) -> None:
    _answers_or_input_error(lambda: plan_mig(CATALOG.gpu(gpu), MigRequest(sms, slices, memory)))
