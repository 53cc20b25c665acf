"""The seeded openb variants of benchmarks/openb/make_variants.py: what each one changes, read back by the loader."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from types import ModuleType

import pytest

from gpupool.sim.traces.openb import load_nodes, load_pods

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
