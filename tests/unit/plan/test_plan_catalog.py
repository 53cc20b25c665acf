"""The packaged GPU and model catalogs, user catalog files, names and GPU specs."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpupool.plan.catalog import Catalog, catalog_from_data, load_catalog, parse_gpu_spec
from gpupool.plan.errors import PlanInputError
from gpupool.plan.precision import Precision

ISSUE_GPUS = ("A100-40GB", "A100-80GB", "H100-SXM", "H100-PCIe", "H200", "H20", "L40S", "L4", "A10", "T4",
              "V100-16GB", "V100-32GB", "RTX-4090")


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def test_every_gpu_of_the_issue_is_in_the_catalog_with_a_source(catalog: Catalog) -> None:
    assert {g.name for g in catalog.gpus} == set(ISSUE_GPUS)
    for gpu in catalog.gpus:
        assert gpu.source, gpu.name
        assert gpu.memory_gib > 0 and gpu.memory_bandwidth_gbps > 0
        assert gpu.peaks["fp16_tflops"], gpu.name  # every GPU here has FP16 tensor cores


def test_every_model_has_a_source_and_a_shape(catalog: Catalog) -> None:
    assert len(catalog.models) >= 10
    for model in catalog.models:
        assert model.source and model.has_shape, model.name


def test_mig_profile_tables_agree_with_slice_arithmetic(catalog: Catalog) -> None:
    # NVIDIA MIG User Guide: instances per GPU = min(floor(7 / compute slices), floor(8 / memory slices)).
    mig_gpus = [g for g in catalog.gpus if g.mig is not None]
    assert {g.name for g in mig_gpus} == {"A100-40GB", "A100-80GB", "H100-SXM", "H100-PCIe", "H200", "H20"}
    for gpu in mig_gpus:
        assert gpu.mig is not None
        for p in gpu.mig.profiles:
            by_compute = gpu.mig.compute_slices // p.compute_slices
            arithmetic = min(by_compute, gpu.mig.memory_slices // p.memory_slices)
            assert p.instances == arithmetic, (gpu.name, p.name)
            # The name's memory is its memory slices' share of the GPU, give or take rounding.
            share = gpu.memory_gib * p.memory_slices / gpu.mig.memory_slices
            assert abs(p.nominal_memory_gib - share) <= 1.0, (gpu.name, p.name)


@pytest.mark.parametrize(
    ("text", "count", "name"),
    [("8xA100-80GB", 8, "A100-80GB"), ("8 x h100", 8, "H100-SXM"), ("H100", 1, "H100-SXM"),
     ("2*a100_40gb", 2, "A100-40GB"), ("4090", 1, "RTX-4090"), ("16xH200", 16, "H200")],
)
def test_gpu_specs_are_read_leniently(catalog: Catalog, text: str, count: int, name: str) -> None:
    spec = parse_gpu_spec(text, catalog)
    assert (spec.count, spec.gpu.name) == (count, name)


@pytest.mark.parametrize("text", ["", "8x", "0xA100", "8xB300"])
def test_bad_gpu_specs_name_the_option(catalog: Catalog, text: str) -> None:
    with pytest.raises(PlanInputError, match="--gpus"):
        parse_gpu_spec(text, catalog)


def test_model_aliases(catalog: Catalog) -> None:
    assert catalog.model("Llama-3.1-70B").name == "llama-3-70b"
    assert catalog.model("DeepSeek-R1").active == 37e9
    with pytest.raises(PlanInputError, match="unknown model 'llama-9'"):
        catalog.model("llama-9")


def test_peaks_fall_back_for_formats_a_gpu_lacks(catalog: Catalog) -> None:
    assert catalog.gpu("A100-80GB").peak_flops(Precision.FP8) == (312e12, "bf16_tflops")
    assert catalog.gpu("V100-32GB").peak_flops(Precision.BF16) == (125e12, "fp16_tflops")
    assert catalog.gpu("H100").peak_flops(Precision.FP8)[1] == "fp8_tflops"


def test_a_user_file_adds_and_replaces_entries(tmp_path: Path) -> None:
    user = tmp_path / "mine.yaml"
    user.write_text(
        "gpus:\n"
        "  - {name: B200, memory_gib: 180, memory_bandwidth_gbps: 8000, bf16_tflops: 2250,\n"
        "     source: my notes}\n"
        "  - {name: L4, aliases: [l4-custom], memory_gib: 24, memory_bandwidth_gbps: 250}\n"
        "models:\n"
        "  - {name: tiny, aliases: [t1], params: 125M, layers: 12, hidden: 768, heads: 12}\n"
    )
    catalog = load_catalog(user)
    assert catalog.gpu("b200").memory_gib == 180
    assert catalog.gpu("l4-custom").memory_bandwidth_gbps == 250  # replaced the packaged L4
    assert catalog.gpu("L4").source == str(user)  # an entry without a source names its file
    assert catalog.model("t1").params == 125e6
    assert catalog.gpu("H100").name == "H100-SXM"  # packaged entries stay


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"gpus": [{"name": "X", "memory_gib": 8}]},
         r"gpus\[0\] \(X\): memory_gib and memory_bandwidth_gbps"),
        ({"gpus": [{"name": "X", "memory_gib": -1, "memory_bandwidth_gbps": 1}]}, r"X\)\.memory_gib"),
        ({"models": [{"name": "m", "params": "7B", "layers": 2.5}]}, r"models\[0\] \(m\)\.layers"),
        ({"models": [{"name": "m", "params": "7B", "hidden": 100, "heads": 3, "layers": 2}]},
         "not a multiple"),
        ({"models": [{"layers": 2}]}, "missing field 'name'"),
        ({"things": []}, "'gpus:' and/or 'models:'"),
    ],
)
def test_bad_entries_name_the_entry_and_field(document: dict[str, object], message: str) -> None:
    with pytest.raises(PlanInputError, match=message):
        catalog_from_data([(document, "mine.yaml")])


def test_unreadable_user_files_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(PlanInputError, match="cannot read"):
        load_catalog(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("gpus: [\n")
    with pytest.raises(PlanInputError, match="not valid YAML"):
        load_catalog(broken)
