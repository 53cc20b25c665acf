"""Generate seeded variants of the openb default pod list that the published experiment does not cover.

    .venv/bin/python benchmarks/openb/make_variants.py            # writes benchmarks/openb/out/variants/*.csv

Variants (each a full pod list in the trace's own 11-column format; all but `cpuonly-*` keep the same pods in
the same order):

- `spec10`, `spec20`, `spec25`, `spec33`: 10 %, 20 %, 25 %, 33 % of the GPU pods (chosen at random) get a
  `gpu_spec` naming the models they accept, in the trace's notation (`V100M16|V100M32`). A spec names 1 to 3
  distinct models (1, 2 or 3 with equal odds), drawn without replacement from the node list's models with probability
  proportional to each model's GPU count, so demand follows supply and a single-model spec of a rare model
  (A10: 2 GPUs) stays rare. Pods already carrying a spec keep it.
- `cpu-half`, `cpu-x1.5`: every pod's CPU demand scaled by 0.5 or 1.5 (rounded to 100 milli, at least 100).
- `cpu-redraw`: CPU demand redrawn: each distinct CPU demand of the list is multiplied by its own factor,
  drawn log-uniformly from [1/2, 2], and rounded to 500 milli (at least 500), so the ratio of CPU to GPU
  changes differently from shape to shape.
- `cpu-redraw-pod`: that per-pod redraw: every pod's CPU demand multiplied by its own factor, log-uniform in
  [1/2, 2], rounded to 500 milli (at least 500), so pods of one shape no longer share a CPU demand: 95 %
  coverage then needs 1,032 shapes where the list has 53, and FGD places many times slower.
- `cpuonly-x0.5`, `cpuonly-x2`, `cpuonly-x2.5`: the CPU-only pods' (`num_gpu` 0) CPU demand in all scaled by
  0.5, 2 or 2.5 by changing how many there are; GPU pods stay exactly as they are. Below 1: the CPU-only
  pods are taken in a seeded random order and kept until their CPU reaches the factor x the total; the rest
  are dropped. Above 1: CPU-only pods are drawn at random (with replacement) and copied until the copies'
  CPU reaches (factor - 1) x the total. A copy keeps its source's columns but its name and times: a new name
  (`openb-pod-NNNN`, numbered on from the list's size, in order of creation), a creation time drawn from
  the creation times of the whole list (so arrivals stay spread over the trace), and deletion and
  scheduled times moved by as much (the deletion capped at the list's latest). Either way the total misses
  the target by less than one pod's CPU, and the list stays in order of creation time (copies after
  originals created at the same second).

The seed (DEFAULT_SEED, 2023) and the rules above fully determine the files; the README of this folder
reports the inflation experiment on them. These knobs were set once from the question they answer ("10 %, 20 %, 33 % of
pods with a spec; varied CPU demand"), not fitted to any result. `spec25` and the `cpuonly-*` factors (0.5,
2, 2.5) were fixed from the names of the published variants this folder lacks (`openb_pod_list_gpuspec25`,
`openb_pod_list_cpu050`/`cpu200`/`cpu250`; `cpu100` is read as the default list itself) before any run.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

TRACES_DIR = Path(__file__).resolve().parents[1] / "traces" / "alibaba-openb-2023"
OUT = Path(__file__).resolve().parent / "out" / "variants"
DEFAULT_SEED = 2023
SPEC_FRACTIONS = {"spec10": 0.10, "spec20": 0.20, "spec25": 0.25, "spec33": 0.33}
CPUONLY_FACTORS = {"cpuonly-x0.5": 0.5, "cpuonly-x2": 2.0, "cpuonly-x2.5": 2.5}
NAME_PREFIX = "openb-pod-"
Row = dict[str, str]


def model_weights(node_file: Path) -> dict[str, int]:
    """GPU count per model in a node list."""
    weights: Counter[str] = Counter()
    with node_file.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if int(row["gpu"]) > 0:
                weights[row["model"].strip()] += int(row["gpu"])
    return dict(sorted(weights.items()))


def draw_spec(rng: random.Random, weights: dict[str, int]) -> str:
    """1 to 3 distinct models, weighted by GPU count, joined by '|' in sorted order."""
    pool = dict(weights)
    chosen = []
    for _ in range(rng.choice((1, 2, 3))):
        models = sorted(pool)
        pick = rng.choices(models, weights=[pool[m] for m in models])[0]
        chosen.append(pick)
        del pool[pick]
        if not pool:
            break
    return "|".join(sorted(chosen))


def with_specs(rows: list[Row], fraction: float, weights: dict[str, int], rng: random.Random) -> list[Row]:
    """A copy of `rows` where `fraction` of the GPU pods without a spec get one."""
    gpu_rows = [i for i, r in enumerate(rows) if int(r["num_gpu"]) > 0 and not r.get("gpu_spec")]
    chosen = set(rng.sample(gpu_rows, round(fraction * len(gpu_rows))))
    return [{**r, "gpu_spec": draw_spec(rng, weights)} if i in chosen else dict(r) for i, r in enumerate(rows)]


def with_cpu(rows: list[Row], change: Callable[[int], int]) -> list[Row]:
    """A copy of `rows` with every pod's cpu_milli replaced by change(cpu_milli)."""
    return [{**r, "cpu_milli": str(change(int(r["cpu_milli"])))} for r in rows]


def _copy(source: Row, created: int, end: int) -> Row:
    """`source` created at `created`: its deletion and scheduled times moved by as much (deletion <= end)."""
    shift = created - int(source["creation_time"])
    deleted = min(end, int(source["deletion_time"]) + shift)
    copy = {**source, "creation_time": str(created), "deletion_time": str(deleted)}
    if source.get("scheduled_time"):
        copy["scheduled_time"] = str(int(source["scheduled_time"]) + shift)
    return copy


def with_cpu_only_scaled(rows: list[Row], factor: float, rng: random.Random) -> list[Row]:
    """A copy of `rows` whose CPU-only pods ask `factor` x their CPU in all: a seeded subset of them for a
    factor below 1, seeded copies added for one above (the module docstring gives the rules)."""
    cpu_only = [i for i, r in enumerate(rows) if int(r["num_gpu"]) == 0]
    total = sum(int(rows[i]["cpu_milli"]) for i in cpu_only)
    if factor <= 1:
        keep, kept = set(), 0
        for i in rng.sample(cpu_only, len(cpu_only)):
            if kept >= factor * total:
                break
            keep.add(i)
            kept += int(rows[i]["cpu_milli"])
        return [dict(r) for i, r in enumerate(rows) if i in keep or int(r["num_gpu"]) > 0]
    times = [int(r["creation_time"]) for r in rows]
    end = max(int(r["deletion_time"]) for r in rows)
    copies: list[Row] = []
    added = 0
    while added < (factor - 1) * total:
        source = rows[rng.choice(cpu_only)]
        copies.append(_copy(source, rng.choice(times), end))
        added += int(source["cpu_milli"])
    return sorted([dict(r) for r in rows] + _renamed(copies, {r["name"] for r in rows}, len(rows)),
                  key=lambda r: int(r["creation_time"]))


def _renamed(copies: list[Row], taken: set[str], number: int) -> list[Row]:
    """`copies` in order of creation, named NAME_PREFIX + a number from `number` on that no name in `taken` has."""
    out = sorted(copies, key=lambda r: int(r["creation_time"]))
    for copy in out:
        while f"{NAME_PREFIX}{number:04d}" in taken:
            number += 1
        copy["name"] = f"{NAME_PREFIX}{number:04d}"
        number += 1
    return out


def _round(value: float, step: int) -> int:
    return max(step, round(value / step) * step)


def variants(rows: list[Row], weights: dict[str, int], seed: int) -> dict[str, list[Row]]:
    """Every variant by name (one generator per variant, seeded from `seed` and the name)."""
    out = {name: with_specs(rows, fraction, weights, random.Random(f"{seed}-{name}"))
           for name, fraction in SPEC_FRACTIONS.items()}
    out["cpu-half"] = with_cpu(rows, lambda c: _round(c * 0.5, 100))
    out["cpu-x1.5"] = with_cpu(rows, lambda c: _round(c * 1.5, 100))
    redraw = random.Random(f"{seed}-cpu-redraw")
    demands = sorted({int(r["cpu_milli"]) for r in rows})
    factor = {c: math.exp(redraw.uniform(-math.log(2), math.log(2))) for c in demands}
    out["cpu-redraw"] = with_cpu(rows, lambda c: _round(c * factor[c], 500))
    per_pod = random.Random(f"{seed}-cpu-redraw-pod")
    out["cpu-redraw-pod"] = with_cpu(rows, lambda c: _round(c * math.exp(per_pod.uniform(-math.log(2), math.log(2))),
                                                            500))
    for name, factor in CPUONLY_FACTORS.items():
        out[name] = with_cpu_only_scaled(rows, factor, random.Random(f"{seed}-{name}"))
    return out


def write_all(out: Path, seed: int) -> list[Path]:
    """Write every variant of the default pod list as out/openb_pod_list_<name>.csv; returns the paths."""
    with (TRACES_DIR / "openb_pod_list_default.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = list(reader.fieldnames or []), list(reader)
    weights = model_weights(TRACES_DIR / "openb_node_list_gpu_node.csv")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, variant in variants(rows, weights, seed).items():
        path = out / f"openb_pod_list_{name}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
            writer.writeheader()
            writer.writerows(variant)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    for path in write_all(args.out, args.seed):
        print(path)


if __name__ == "__main__":
    main()
