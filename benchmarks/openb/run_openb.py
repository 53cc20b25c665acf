"""Reproduce the FGD paper's inflation experiment for every policy on the openb traces.

    .venv/bin/python benchmarks/openb/run_openb.py                  # all traces, 10 seeds, all policies
    .venv/bin/python benchmarks/openb/run_openb.py --traces default --seeds 42-44
    .venv/bin/python benchmarks/openb/run_openb.py --traces variants --seeds 42-44   # generated variants

Trace names are the published pod lists (`default`, `gpushare40`, ...) and the generated variants of
make_variants.py (`spec10`, `spec20`, `spec25`, `spec33`, `cpu-half`, `cpu-x1.5`, `cpu-redraw`,
`cpu-redraw-pod`, `cpuonly-x0.5`, `cpuonly-x2`, `cpuonly-x2.5`; `variants` names them all, `published` the
published ones); variants are written to --out/variants/ first.

Writes `results.json`, `results.md` (the README tables) and one PNG of median curves per trace into
--out (default benchmarks/openb/out/). Published figures come from published_results_fgd_atc23.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import make_variants

from gpupool.cli.sim_run import parse_seeds
from gpupool.sim.inflation import InflationResult, run_inflation
from gpupool.sim.plots import plot_inflation
from gpupool.sim.sweep import median_curve, summary_table
from gpupool.sim.traces.openb import load_nodes, load_pods

TRACES_DIR = Path(__file__).resolve().parents[1] / "traces" / "alibaba-openb-2023"
TRACES = ("default", "gpushare40", "gpushare60", "gpushare80", "gpushare100", "multigpu20", "multigpu30",
          "multigpu40", "multigpu50")
VARIANTS = (*make_variants.SPEC_FRACTIONS, "cpu-half", "cpu-x1.5", "cpu-redraw", "cpu-redraw-pod",
            *make_variants.CPUONLY_FACTORS)
POLICIES = ("random", "spread", "binpack", "bestfit", "fgd-plain", "fgd")
PUBLISHED = {"01-Random": "random", "04-GpuPacking": "packing", "05-BestFit": "bestfit", "06-FGD": "fgd",
             "02-DotProd": "dotprod", "03-GpuClustering": "clustering"}


def _run(args: tuple[str, str, int, Path]) -> InflationResult:
    _trace, policy, seed, pod_file = args
    nodes = load_nodes(TRACES_DIR / "openb_node_list_gpu_node.csv")
    return run_inflation(nodes, load_pods(pod_file), policy, seed)


def pod_files(traces: list[str], out: Path) -> dict[str, Path]:
    """The pod list of each trace name; generated variants are written under out/variants first."""
    unknown = [t for t in traces if t not in TRACES and t not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown trace(s) {', '.join(unknown)}; choose from {', '.join(TRACES + VARIANTS)}")
    files = {t: TRACES_DIR / f"openb_pod_list_{t}.csv" for t in traces if t in TRACES}
    if any(t in VARIANTS for t in traces):
        make_variants.write_all(out / "variants", make_variants.DEFAULT_SEED)
        files |= {t: out / "variants" / f"openb_pod_list_{t}.csv" for t in traces if t in VARIANTS}
    return files


def published() -> dict[str, dict[str, float]]:
    """trace -> published policy name -> median unallocated % at 100% arrived."""
    table: dict[str, dict[str, float]] = {}
    with (TRACES_DIR / "published_results_fgd_atc23.csv").open() as handle:
        for row in csv.DictReader(handle):
            trace = row["workload"].removeprefix("openb_pod_list_")
            table.setdefault(trace, {})[PUBLISHED[row["policy"]]] = float(row["unalloc_pct_median@arr100"])
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", default="published")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--seeds", default="42-51")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    args = parser.parse_args()
    names = {"published": ",".join(TRACES), "variants": ",".join(VARIANTS)}
    traces = ",".join(names.get(t, t) for t in args.traces.split(",")).split(",")
    policies = args.policies.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    files = pod_files(traces, args.out)
    tasks = [(t, p, s, files[t]) for t in traces for p in policies for s in parse_seeds(args.seeds)]
    started, results = time.perf_counter(), []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(_run, task): task for task in tasks}
        for done, future in enumerate(as_completed(futures), start=1):
            results.append((futures[future][0], future.result()))
            print(f"\r{done}/{len(tasks)} runs, {time.perf_counter() - started:.0f} s", end="", file=sys.stderr)
    print(file=sys.stderr)
    report = _report(traces, policies, results, time.perf_counter() - started, args.out)
    (args.out / "results.md").write_text(report)
    print(report)


def _report(traces: list[str], policies: list[str], results: list[tuple[str, InflationResult]], elapsed: float,
            out: Path) -> str:
    paper = published()
    lines = [f"{len(results)} runs in {elapsed:.0f} s", ""]
    everything = {}
    for trace in traces:
        runs = sorted((r for t, r in results if t == trace), key=lambda r: (policies.index(r.policy), r.seed))
        rows = summary_table(runs)
        everything[trace] = rows
        grid = [x / 2 for x in range(261)]
        plot_inflation(grid, {p: median_curve([r for r in runs if r.policy == p], grid) for p in policies},
                       out / f"{trace}.png", f"openb {trace}: median over seeds")
        lines += [f"### {trace}", "", "| policy | unalloc % @100 | @110 | @130 | frag % cap @90 | frag % idle @90 |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['policy']} | " + " | ".join(_cell(r[k]) for k in (
            "unallocated_pct@100", "unallocated_pct@110", "unallocated_pct@130", "frag_pct_of_capacity@90",
            "frag_pct_of_idle@90")) + " |" for r in rows]
        lines += ["", "published: " + ", ".join(f"{k} {v}" for k, v in paper.get(trace, {}).items()), ""]
    (out / "results.json").write_text(json.dumps(everything, indent=1))
    return "\n".join(lines)


def _cell(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else "-"


if __name__ == "__main__":
    main()
