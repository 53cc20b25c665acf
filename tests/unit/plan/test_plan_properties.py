"""Property tests: memory grows with sequence length and batch; more ZeRO never needs more memory."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpupool.plan.inference import kv_bytes_per_token
from gpupool.plan.memory import (
    Layout,
    Optimizer,
    Recompute,
    TrainingSetup,
    activation_bytes_per_layer,
    training_memory_bytes,
)
from gpupool.plan.models import ModelShape
from gpupool.plan.precision import Precision
from gpupool.plan.units import format_count, parse_count

PRECISIONS = st.sampled_from([Precision.BF16, Precision.FP16, Precision.FP32])


@st.composite
def models(draw: st.DrawFn) -> ModelShape:
    heads = draw(st.sampled_from([8, 16, 32, 64, 128]))
    hidden = heads * draw(st.sampled_from([64, 128]))
    layers = draw(st.integers(1, 128))
    return ModelShape(name="m", params=12 * layers * hidden**2, layers=layers, hidden=hidden, heads=heads)


@st.composite
def layouts(draw: st.DrawFn) -> Layout:
    return Layout(
        tp=draw(st.sampled_from([1, 2, 4, 8])), pp=draw(st.sampled_from([1, 2, 4])),
        dp=draw(st.integers(1, 512)), zero=draw(st.integers(0, 3)), sequence_parallel=draw(st.booleans()),
    )


@st.composite
def setups(draw: st.DrawFn) -> TrainingSetup:
    return TrainingSetup(
        model=draw(models()), seq=draw(st.integers(1, 32768)), micro_batch=draw(st.integers(1, 64)),
        precision=draw(PRECISIONS), optimizer=draw(st.sampled_from(list(Optimizer))),
        recompute=draw(st.sampled_from(list(Recompute))), layout=draw(layouts()),
    )


@given(setups(), st.integers(1, 32768))
def test_memory_is_monotone_in_sequence_length(setup: TrainingSetup, extra: int) -> None:
    longer = TrainingSetup(**{**vars(setup), "seq": setup.seq + extra})
    assert training_memory_bytes(setup) <= training_memory_bytes(longer)


@given(setups(), st.integers(1, 64))
def test_memory_is_monotone_in_micro_batch(setup: TrainingSetup, extra: int) -> None:
    bigger = TrainingSetup(**{**vars(setup), "micro_batch": setup.micro_batch + extra})
    assert training_memory_bytes(setup) <= training_memory_bytes(bigger)


def with_zero(layout: Layout, zero: int) -> Layout:
    return Layout(**{**vars(layout), "zero": zero})


@given(setups())
def test_a_higher_zero_stage_never_needs_more_memory_per_gpu(setup: TrainingSetup) -> None:
    by_stage = [
        training_memory_bytes(TrainingSetup(**{**vars(setup), "layout": with_zero(setup.layout, z)}))
        for z in range(4)
    ]
    assert by_stage == sorted(by_stage, reverse=True)


@given(setups())
def test_more_recomputation_never_needs_more_memory(setup: TrainingSetup) -> None:
    by_mode = [
        training_memory_bytes(TrainingSetup(**{**vars(setup), "recompute": mode}))
        for mode in (Recompute.NONE, Recompute.SELECTIVE, Recompute.FULL)
    ]
    assert by_mode == sorted(by_mode, reverse=True)


@given(
    models(), st.integers(1, 8192), st.integers(1, 16), st.sampled_from([2, 4, 8]),
    st.sampled_from(list(Recompute)),
)
def test_sequence_parallel_divides_activations_by_t(
    model: ModelShape, seq: int, batch: int, tp: int, recompute: Recompute
) -> None:
    # Korthikanti et al. 2022, Table 2: with sequence parallelism every term is divided by t.
    assert model.hidden is not None and model.heads is not None
    alone, _ = activation_bytes_per_layer(
        seq=seq, micro_batch=batch, hidden=model.hidden, heads=model.heads, tp=1, sequence_parallel=False,
        recompute=recompute,
    )
    split, _ = activation_bytes_per_layer(
        seq=seq, micro_batch=batch, hidden=model.hidden, heads=model.heads, tp=tp, sequence_parallel=True,
        recompute=recompute,
    )
    assert abs(split * tp - alone) <= 1e-9 * alone


@given(models(), st.sampled_from([1, 2, 4, 8]))
def test_grouped_query_attention_divides_the_kv_cache_by_the_group(model: ModelShape, group: int) -> None:
    assert model.heads is not None
    full, _ = kv_bytes_per_token(model, Precision.BF16)
    grouped_model = ModelShape(**{**vars(model), "kv_heads": model.heads // group})
    grouped, _ = kv_bytes_per_token(grouped_model, Precision.BF16)
    assert grouped * group == full


@given(st.floats(1e3, 1e13))
def test_counts_survive_formatting_and_parsing(value: float) -> None:
    assert parse_count(format_count(value)) == pytest.approx(value, rel=0.005)
