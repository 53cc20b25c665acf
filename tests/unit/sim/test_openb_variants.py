"""The seeded openb variants of benchmarks/openb/make_variants.py: what each one changes, read back by the loader."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from types import ModuleType

import pytest

from gpupool.sim.traces.openb import TracePod, load_nodes, load_pods

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "openb" / "make_variants.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_variants", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("variants")
    return {p.stem.removeprefix("openb_pod_list_"): p for p in _script().write_all(out, 2023)}


def test_a_fraction_of_the_gpu_pods_name_models_of_the_node_list(written: dict[str, Path]) -> None:
    make_variants = _script()
    default = load_pods(make_variants.TRACES_DIR / "openb_pod_list_default.csv")
    models = {g.model for n in load_nodes(make_variants.TRACES_DIR / "openb_node_list_gpu_node.csv") for g in n.gpus}
    gpu_pods = sum(p.num_gpu > 0 for p in default)
    for name, fraction in (("spec10", 0.10), ("spec20", 0.20), ("spec33", 0.33)):
        pods = load_pods(written[name])
        named = [p for p in pods if p.gpu_spec]
        assert len(named) == round(fraction * gpu_pods)
        assert all(p.num_gpu > 0 and 1 <= len(p.gpu_spec) <= 3 and set(p.gpu_spec) <= models for p in named)
        # nothing but the spec changes
        assert [(p.name, p.cpu_milli, p.num_gpu, p.gpu_milli) for p in pods] == \
            [(p.name, p.cpu_milli, p.num_gpu, p.gpu_milli) for p in default]


def test_cpu_variants_scale_or_redraw_cpu_only(written: dict[str, Path]) -> None:
    default = load_pods(_script().TRACES_DIR / "openb_pod_list_default.csv")
    half, more, redraw = (load_pods(written[n]) for n in ("cpu-half", "cpu-x1.5", "cpu-redraw"))
    # 12000 -> 6000 and 18000; any demand -> a multiple of 500 within [1/2, 2] of it (rounding aside)
    first = default[0].cpu_milli
    assert (half[0].cpu_milli, more[0].cpu_milli) == (round(first * 0.5 / 100) * 100, round(first * 1.5 / 100) * 100)
    assert all(r.cpu_milli % 500 == 0 and d.cpu_milli / 2 - 250 <= r.cpu_milli <= d.cpu_milli * 2 + 250
               for r, d in zip(redraw, default, strict=True))
    # one factor per distinct demand: pods that asked the same CPU still ask the same
    by_demand: dict[int, set[int]] = {}
    for r, d in zip(redraw, default, strict=True):
        by_demand.setdefault(d.cpu_milli, set()).add(r.cpu_milli)
    assert all(len(v) == 1 for v in by_demand.values())
    assert [p.gpu_total_milli for p in redraw] == [p.gpu_total_milli for p in default]


def test_specs_are_seeded_and_weighted_by_gpu_count() -> None:
    make_variants = _script()
    weights = {"big": 1000, "small": 1}
    draws = [make_variants.draw_spec(random.Random(7), weights) for _ in range(2)]
    assert draws[0] == draws[1]
    rng = random.Random(1)
    singles = [s for s in (make_variants.draw_spec(rng, weights) for _ in range(300)) if "|" not in s]
    # a one-model spec names "big" about 1000 times in 1001
    assert singles.count("big") >= len(singles) - 3


def test_the_per_pod_redraw_gives_pods_of_one_demand_different_cpu(written: dict[str, Path]) -> None:
    default = load_pods(_script().TRACES_DIR / "openb_pod_list_default.csv")
    per_pod = load_pods(written["cpu-redraw-pod"])
    # each pod's own factor in [1/2, 2], then a multiple of 500 (rounding aside, as above)
    assert all(r.cpu_milli % 500 == 0 and d.cpu_milli / 2 - 250 <= r.cpu_milli <= d.cpu_milli * 2 + 250
               for r, d in zip(per_pod, default, strict=True))
    # unlike cpu-redraw, pods that asked the same CPU now ask different amounts: the most common demand
    # of the list (hundreds of pods) is spread over several values
    by_demand: dict[int, set[int]] = {}
    for r, d in zip(per_pod, default, strict=True):
        by_demand.setdefault(d.cpu_milli, set()).add(r.cpu_milli)
    assert max(len(v) for v in by_demand.values()) > 3
    assert [p.gpu_total_milli for p in per_pod] == [p.gpu_total_milli for p in default]


@pytest.fixture(scope="module")
def default() -> list[TracePod]:
    return load_pods(_script().TRACES_DIR / "openb_pod_list_default.csv")


def test_the_spec25_variant_names_models_for_a_quarter_of_the_gpu_pods(written: dict[str, Path],
                                                                      default: list[TracePod]) -> None:
    pods = load_pods(written["spec25"])
    assert sum(bool(p.gpu_spec) for p in pods) == round(0.25 * sum(p.num_gpu > 0 for p in default))


def _cpu_only_total(pods: list[TracePod]) -> int:
    return sum(p.cpu_milli for p in pods if p.num_gpu == 0)


@pytest.mark.parametrize(("name", "factor"), [("cpuonly-x0.5", 0.5), ("cpuonly-x2", 2.0), ("cpuonly-x2.5", 2.5)])
def test_cpu_only_variants_scale_the_cpu_only_demand_and_keep_the_gpu_pods(
        written: dict[str, Path], default: list[TracePod], name: str, factor: float) -> None:
    pods = load_pods(written[name])
    # within one pod's CPU of factor x the default's CPU-only total (no CPU-only pod asks more than 32 cores)
    assert abs(_cpu_only_total(pods) - factor * _cpu_only_total(default)) <= 32_000
    assert [p for p in pods if p.num_gpu > 0] == [p for p in default if p.num_gpu > 0]
    assert len({p.name for p in pods}) == len(pods)
    times = [p.creation_time or 0.0 for p in pods]
    assert times == sorted(times)
    shapes = {(p.cpu_milli, p.memory_mib, p.qos) for p in default if p.num_gpu == 0}
    originals = {p.name: p for p in default}
    end = max(p.deletion_time or 0.0 for p in default)
    for pod in (p for p in pods if p.num_gpu == 0):
        if factor < 1:  # a subset: every pod is one of the default list's, unchanged
            assert originals[pod.name] == pod
        else:  # originals plus copies of their shapes, created within the trace's span
            assert (pod.cpu_milli, pod.memory_mib, pod.qos) in shapes
            assert times[0] <= (pod.creation_time or 0.0) <= (pod.deletion_time or 0.0) <= end
    if factor > 1:
        assert {p.name for p in default} <= {p.name for p in pods}


def test_cpu_only_scaling_is_seeded_and_spreads_the_copies_over_time() -> None:
    make_variants = _script()
    rows = [{"name": f"openb-pod-{i:04d}", "cpu_milli": str(1000 * (1 + i % 4)), "memory_mib": "1024",
             "num_gpu": str(i % 2), "gpu_milli": str(1000 * (i % 2)), "gpu_spec": "", "qos": "LS",
             "pod_phase": "Running", "creation_time": str(100 * i), "deletion_time": str(100 * i + 50),
             "scheduled_time": str(100 * i)} for i in range(200)]
    once, again = (make_variants.with_cpu_only_scaled(rows, 2.5, random.Random("s")) for _ in range(2))
    assert once == again
    assert once != make_variants.with_cpu_only_scaled(rows, 2.5, random.Random("t"))
    copies = [r for r in once if int(r["name"].removeprefix("openb-pod-")) >= 200]
    created = sorted(int(r["creation_time"]) for r in copies)
    assert created[0] < 5_000 and created[-1] > 15_000  # arrivals over the whole span, not bunched
    # drawn from the whole list's creation times: some at a GPU pod's (odd i: 100, 300, ...), not the source's
    assert any(t % 200 == 100 for t in created)
    # deletion keeps each copy's duration (50 s), capped at the list's latest deletion
    assert all(int(r["deletion_time"]) == min(int(r["creation_time"]) + 50, 19_950) for r in copies)
    half = make_variants.with_cpu_only_scaled(rows, 0.5, random.Random("s"))
    assert half == make_variants.with_cpu_only_scaled(rows, 0.5, random.Random("s"))
    assert sum(int(r["num_gpu"]) == 0 for r in half) < 100 and sum(int(r["num_gpu"]) > 0 for r in half) == 100
