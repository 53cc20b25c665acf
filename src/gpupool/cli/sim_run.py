"""The work behind `gpupool sim` commands (imported only when a sim command runs: it pulls in numpy)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gpupool.cli.common import make_console
from gpupool.domain.queues import QueueSpec, parse_queue
from gpupool.scheduler.placement.registry import make_policy
from gpupool.scheduler.profile import SchedulerProfile
from gpupool.sim.engine import ReplayConfig, ReplayEngine
from gpupool.sim.inflation import InflationResult, run_inflation
from gpupool.sim.metrics import summarise
from gpupool.sim.placements_file import verify_placements, write_placements
from gpupool.sim.sweep import SUMMARY_KEYS, median_curve, summary_table
from gpupool.sim.traces.generic import load_workloads
from gpupool.sim.traces.openb import load_nodes, load_pods
from gpupool.sim.workloads import SimWorkload, from_openb

out = make_console()
err = make_console(stderr=True)

def _check_policy(name: str) -> str:
    make_policy(name)  # raises a ValidationError with a suggestion for unknown names
    return name


def parse_seeds(text: str) -> list[int]:
    """'42-51' -> 42..51; '1,5,9' -> [1, 5, 9]."""
    seeds: list[int] = []
    for raw in text.split(","):
        part = raw.strip()
        try:
            if "-" in part:
                low, high = (int(x) for x in part.split("-", 1))
                if high < low:
                    raise ValueError
                seeds.extend(range(low, high + 1))
            elif part:
                seeds.append(int(part))
        except ValueError:
            raise ValueError(f"cannot read seeds {text!r}; write e.g. 42-51 or 1,5,9") from None
    if not seeds:
        raise ValueError("give at least one seed")
    return seeds


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, list):
        return f"{value[0]}..{value[-1]}" if len(value) > 1 else str(value[0])
    return str(value)


SHORT_NAMES = {"unallocated_pct@100": "unalloc%@100", "unallocated_pct@110": "unalloc%@110",
               "unallocated_pct@130": "unalloc%@130", "frag_pct_of_capacity@90": "frag%cap@90",
               "frag_pct_of_idle@90": "frag%idle@90", "pods_per_s": "pods/s"}


def _table(rows: list[dict[str, object]], keys: tuple[str, ...], title: str) -> Table:
    table = Table(title=title)
    for key in keys:
        table.add_column(SHORT_NAMES.get(key, key), justify="left" if key == "policy" else "right")
    for row in rows:
        table.add_row(*(_fmt(row.get(k)) for k in keys))
    return table


def _one_run(args: tuple[str, str, str, int, float]) -> InflationResult:
    nodes_path, pods_path, policy, seed, inflation = args
    return run_inflation(load_nodes(nodes_path), load_pods(pods_path), policy, seed, inflation)


def _run_parallel(tasks: list[tuple[str, str, str, int, float]], jobs: int) -> list[InflationResult]:
    progress = Progress(TextColumn("runs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err)
    results = []
    with progress, ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        bar = progress.add_task("runs", total=len(tasks))
        for future in as_completed([pool.submit(_one_run, t) for t in tasks]):
            results.append(future.result())
            progress.advance(bar)
    return results


def load_queues(path: Path | None) -> dict[str, QueueSpec]:
    """Queues from a YAML mapping {name: {guaranteed: {gpu: 8}, limit: ..., weight: 2, lend: true}}."""
    if path is None:
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of queue names to queue definitions")
    return {str(name): parse_queue(str(name), spec) for name, spec in data.items()}


def _replay_workloads(pods: Path | None, workloads: Path | None, exact_runtime: bool) -> list[SimWorkload]:
    if (pods is None) == (workloads is None):
        raise ValueError("give exactly one of --pods (openb) or --workloads (gpupool trace)")
    if pods is not None:
        return from_openb(load_pods(pods), exact_runtime=exact_runtime)
    assert workloads is not None
    return load_workloads(workloads)


def _with_progress(run: Callable[..., Any], total: int) -> Any:
    progress = Progress(TextColumn("workloads done"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err)
    with progress:
        bar = progress.add_task("replay", total=total)
        result = run(lambda _now, finished, _total: progress.update(bar, completed=finished))
        progress.update(bar, completed=total)
    return result


def _plot_replay(result: Any, path: Path, policy: str) -> None:
    from gpupool.sim.plots import plot_replay  # noqa: PLC0415  (matplotlib only when plotting)

    capacity = max(result.capacity_gpu_milli, 1)
    allocation = [(t, 100.0 * v / capacity) for t, v in result.allocation]
    queues = sorted({q for _, usage in result.queue_usage for q in usage})
    per_queue = {q: [(t, 100.0 * u.get(q, 0) / capacity) for t, u in result.queue_usage] for q in queues}
    plot_replay(allocation, per_queue, path, f"replay with {policy}")


def _print_replay(summary: dict[str, Any], policy: str) -> None:
    table = Table(title=f"replay with {policy}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("workloads", "completed", "stopped_at_max_runtime", "rejected", "never_started",
                "gpu_allocation_pct_mean", "gpu_allocation_pct_mean_while_arriving", "gpu_allocation_pct_max",
                "preemptions", "contended_s", "jain_fairness", "cycles", "decisions_per_s"):
        table.add_row(key, _fmt(summary[key]))
    for key in ("queueing_delay_s", "completion_time_s"):
        d = summary[key]
        table.add_row(key, f"mean {_fmt(d['mean'])}  p50 {_fmt(d['p50'])}  p95 {_fmt(d['p95'])}  p99 {_fmt(d['p99'])}")
    out.print(table)
    queues = Table(title="queues: share of the GPU in use while queues contend; pool share over the whole run")
    for column in ("queue", "share %", "pool share %", "guaranteed %", "weight"):
        queues.add_column(column, justify="left" if column == "queue" else "right")
    for name, q in summary["queues"].items():
        queues.add_row(name, _fmt(100 * q["share"]), _fmt(100 * q["pool_share"]), _fmt(100 * q["guaranteed"]),
                       _fmt(q["weight"]))
    out.print(queues)


def run_openb(nodes: Path, pods: Path, policy: str, seed: int, inflation: float, placements_out: Path | None,
              as_json: bool) -> None:
    """The `gpupool sim openb` command."""
    _check_policy(policy)
    started = time.perf_counter()
    result = run_inflation(load_nodes(nodes), load_pods(pods), policy, seed, inflation)
    elapsed = time.perf_counter() - started
    if placements_out is not None:
        write_placements(result.records, placements_out)
    summary = {**result.summary(), "seconds": elapsed, "pods_per_s": len(result.records) / elapsed}
    if as_json:
        out.print_json(json.dumps(summary))
        return
    table = Table(title=f"inflation experiment on {pods.name}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key in ("policy", "seed", "pods", "placed", *SUMMARY_KEYS, "pods_per_s"):
        table.add_row(key, _fmt(summary[key]))
    out.print(table)


def run_sweep(nodes: Path, pods: Path, policies: str, seeds: str, inflation: float, plot: Path | None, jobs: int,
              as_json: bool) -> None:
    """The `gpupool sim sweep` command."""
    names = [_check_policy(p.strip()) for p in policies.split(",") if p.strip()]
    tasks = [(str(nodes), str(pods), p, s, inflation) for p in names for s in parse_seeds(seeds)]
    started = time.perf_counter()
    results = _run_parallel(tasks, jobs or os.cpu_count() or 1)
    elapsed = time.perf_counter() - started
    results.sort(key=lambda r: (names.index(r.policy), r.seed))
    rows = summary_table(results)
    if plot is not None:
        from gpupool.sim.plots import plot_inflation  # noqa: PLC0415  (matplotlib only when plotting)

        grid = [x / 2 for x in range(0, 261)]
        curves = {p: median_curve([r for r in results if r.policy == p], grid) for p in names}
        plot_inflation(grid, curves, plot, f"{pods.name}: median over {len(parse_seeds(seeds))} seeds")
    if as_json:
        out.print_json(json.dumps({"rows": rows, "seconds": elapsed}))
        return
    out.print(_table(rows, ("policy", "seeds", *SUMMARY_KEYS), f"{pods.name}: medians over seeds"))
    out.print(f"{len(tasks)} runs in {elapsed:.0f} s")


def run_replay(nodes: Path, pods: Path | None, workloads: Path | None, policy: str, queues: Path | None,
               time_scale: float, duration_scale: float, cycle_interval: float, exact_runtime: bool,
               plot: Path | None, as_json: bool) -> None:
    """The `gpupool sim replay` command."""
    _check_policy(policy)
    trace = _replay_workloads(pods, workloads, exact_runtime)
    queue_specs = load_queues(queues)
    config = ReplayConfig(SchedulerProfile(policy=policy), queue_specs, time_scale, duration_scale, cycle_interval)
    engine = ReplayEngine(load_nodes(nodes), trace, config, timer=time.perf_counter)
    result = _with_progress(engine.run, len(trace))
    summary = summarise(result, queue_specs)
    if plot is not None:
        _plot_replay(result, plot, policy)
    if as_json:
        out.print_json(json.dumps(summary))
        return
    _print_replay(summary, policy)


def run_verify(nodes: Path, pods: Path, placements: Path, as_json: bool) -> None:
    """The `gpupool sim verify` command; exits 1 when the file has problems."""
    report = verify_placements(load_nodes(nodes), load_pods(pods), placements)
    figures = {"rows": len(report.arrived_pct), "problems": report.problems[:20], "problem_count": len(report.problems),
               **{f"unallocated_pct@{p:g}": report.unallocated_at(p) for p in (100.0, 110.0, 130.0)}}
    if as_json:
        out.print_json(json.dumps(figures))
    else:
        out.print(f"{figures['rows']} rows, {len(report.problems)} problems; unallocated at 100% arrived: "
                  f"{_fmt(figures['unallocated_pct@100'])}%")
        for problem in report.problems[:20]:
            out.print(f"  {problem}")
    if report.problems:
        raise typer.Exit(1)
