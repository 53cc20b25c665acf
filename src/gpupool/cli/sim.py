"""`gpupool sim`: run the scheduler on traces — the FGD inflation experiment, policy sweeps, and replays.

The commands' work lives in `cli/sim_run.py`, imported only when a sim command runs, so that other
commands start without loading the simulator.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from gpupool.cli.common import ExitCode, fail
from gpupool.domain.errors import GpupoolError
from gpupool.scheduler.placement.names import POLICY_NAMES

sim_app = typer.Typer(help="Simulate the scheduler on traces: policies, what-ifs, and the FGD benchmark.",
                      no_args_is_help=True)

NodesOpt = Annotated[Path, typer.Option("--nodes", help="Node list CSV (openb format: sn,cpu_milli,memory_mib,gpu,"
                                        "model).", exists=True, dir_okay=False)]
PodsOpt = Annotated[Path, typer.Option("--pods", help="Pod list CSV (openb format).", exists=True, dir_okay=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@contextmanager
def _user_errors(as_json: bool = False) -> Iterator[None]:
    """Bad input (a trace, a policy, a file) ends as one `error: ...` line (JSON with --json), exit 2."""
    try:
        yield
    except (GpupoolError, ValueError, OSError) as exc:
        raise fail(str(exc), "usage_error", ExitCode.USAGE, as_json=as_json) from None


@sim_app.command("openb")
def openb(
    nodes: NodesOpt,
    pods: PodsOpt,
    policy: Annotated[str, typer.Option(help=f"Placement policy: {', '.join(POLICY_NAMES)}.")] = "fgd",
    seed: Annotated[int, typer.Option(help="Seed of the pod sampling (the paper uses 42..51).")] = 42,
    inflation: Annotated[float, typer.Option(help="Sample until this multiple of GPU capacity.")] = 1.3,
    placements_out: Annotated[Path | None, typer.Option("--placements-out", help="Write seq,pod,node,gpus CSV.")]
    = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the FGD paper's inflation experiment once: sample, shuffle, place one pod at a time."""
    from gpupool.cli.sim_run import run_openb  # noqa: PLC0415  (the simulator only when this command runs)

    with _user_errors(as_json):
        run_openb(nodes, pods, policy, seed, inflation, placements_out, as_json)


@sim_app.command("sweep")
def sweep(
    nodes: NodesOpt,
    pods: PodsOpt,
    policies: Annotated[str, typer.Option(help="Comma-separated policies.")] = "random,spread,binpack,bestfit,"
    "fgd-plain,fgd",
    seeds: Annotated[str, typer.Option(help="Seeds: 42-51 or 1,5,9.")] = "42-51",
    inflation: Annotated[float, typer.Option(help="Sample until this multiple of GPU capacity.")] = 1.3,
    plot: Annotated[Path | None, typer.Option(help="Write the median unallocated-vs-arrived curves as PNG.")] = None,
    jobs: Annotated[int, typer.Option(help="Parallel processes (default: CPU count).")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Run the inflation experiment for several policies and seeds; print the medians per policy."""
    from gpupool.cli.sim_run import run_sweep  # noqa: PLC0415  (the simulator only when this command runs)

    with _user_errors(as_json):
        run_sweep(nodes, pods, policies, seeds, inflation, plot, jobs, as_json)


@sim_app.command("replay")
def replay(
    nodes: NodesOpt,
    pods: Annotated[Path | None, typer.Option("--pods", help="openb pod list with times.", exists=True)] = None,
    workloads: Annotated[Path | None, typer.Option(help="gpupool trace (.csv or .jsonl).", exists=True)] = None,
    policy: Annotated[str, typer.Option(help="Placement policy.")] = "fgd",
    queues: Annotated[Path | None, typer.Option(help="YAML file of queue definitions.", exists=True)] = None,
    time_scale: Annotated[float, typer.Option(help="Compress arrivals by this factor.")] = 1.0,
    duration_scale: Annotated[float, typer.Option(help="Compress durations by this factor.")] = 1.0,
    cycle_interval: Annotated[float, typer.Option(help="Seconds between scheduling cycles (0: every event).")] = 0.0,
    exact_runtime: Annotated[bool, typer.Option(help="openb: declare true durations as max_runtime.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write GPU allocation over time as PNG.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Replay a trace through the full scheduling cycle with a virtual clock."""
    from gpupool.cli.sim_run import run_replay  # noqa: PLC0415  (the simulator only when this command runs)

    with _user_errors(as_json):
        run_replay(nodes, pods, workloads, policy, queues, time_scale, duration_scale, cycle_interval,
                   exact_runtime, plot, as_json)


@sim_app.command("verify")
def verify(
    nodes: NodesOpt,
    pods: PodsOpt,
    placements: Annotated[Path, typer.Option(help="Placements CSV written by --placements-out.", exists=True)],
    as_json: JsonOpt = False,
) -> None:
    """Re-check a placements file independently of the scheduler: feasibility and the allocation curve."""
    from gpupool.cli.sim_run import run_verify  # noqa: PLC0415  (the simulator only when this command runs)

    with _user_errors(as_json):
        run_verify(nodes, pods, placements, as_json)
