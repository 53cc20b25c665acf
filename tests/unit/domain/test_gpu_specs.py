"""The one GPU-spec grammar (`4xA100-80GB`), shared by declared simulated GPUs and the planner."""

from __future__ import annotations

import pytest

from gpupool.domain.errors import ValidationError
from gpupool.domain.gpu_specs import GpuCountSpec, memory_in_name, parse_gpu_count
from gpupool.plan.catalog import load_catalog, parse_gpu_spec
from gpupool.server.local_node import parse_declared_gpus


@pytest.mark.parametrize(("text", "expected"), [
    ("4xA100-80GB", GpuCountSpec(4, "A100-80GB", True)),
    ("8 x H100", GpuCountSpec(8, "H100", True)),
    ("2*T4", GpuCountSpec(2, "T4", True)),
    ("H100", GpuCountSpec(1, "H100", False)),
])
def test_counts_and_names(text: str, expected: GpuCountSpec) -> None:
    assert parse_gpu_count(text) == expected


@pytest.mark.parametrize(("text", "required", "message"), [
    ("", False, "cannot read ''"), ("0xA100", False, "must be at least 1"), ("H100", True, "write COUNTxGPU")])
def test_bad_specs(text: str, required: bool, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_gpu_count(text, count_required=required)


def test_memory_in_the_name() -> None:
    assert memory_in_name("A100-80GB") == ("A100", 80.0)
    assert memory_in_name("t4-16gib") == ("t4", 16.0)
    assert memory_in_name("H100") is None


def test_both_users_read_the_same_text_the_same_way() -> None:
    # the planner and the declared GPUs agree on count and memory (80 GiB = 81920 MiB)
    planned = parse_gpu_spec("2xH100", load_catalog())
    declared = parse_declared_gpus("2xH100")
    assert planned.count == len(declared) == 2
    assert planned.gpu.memory_gib * 1024 == declared[0].memory_mib == 81920
    # a model known to the catalog without its memory in the name: L40S has 48 GiB there
    assert parse_declared_gpus("1xL40S")[0].memory_mib == 48 * 1024


def test_an_unknown_model_must_say_its_memory() -> None:
    with pytest.raises(ValidationError, match=r"unknown GPU model 'XPU9'; give its memory, e\.g\. 2xXPU9-24GB"):
        parse_declared_gpus("2xXPU9")
    assert parse_declared_gpus("2xXPU9-24GB")[0].memory_mib == 24 * 1024
