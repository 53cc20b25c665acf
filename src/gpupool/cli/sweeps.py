"""`gpupool sweep submit|show|best|stop`: hyper-parameter sweeps (kind: sweep). A sweep is named by its id or
its name (the newest sweep of that name you can see)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gpupool.cli.common import JSON_HELP, console, handle_errors, make_light_client, print_json, status_text, table
from gpupool.domain.errors import ConflictError

if TYPE_CHECKING:
    from gpupool.client.light import JsonObject

sweep_app = typer.Typer(help="Hyper-parameter sweeps: Optuna searches, trials run as jobs in your queue.",
                        no_args_is_help=True)
SweepArg = Annotated[str, typer.Argument(help="The sweep's id, or its name (the newest of that name).")]


@sweep_app.command()
@handle_errors
def submit(file: Annotated[str, typer.Argument(help="A YAML sweep spec (kind: sweep), or - for stdin.")],
           as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """Submit a sweep. On a server on this machine its trials run in the spec file's directory (unless the
    spec says `workdir:`)."""
    from gpupool.cli.workloads import _is_local, _read  # noqa: PLC0415  (lazy: start-up time)

    text = sys.stdin.read() if file == "-" else _read(file)
    with make_light_client() as client:
        here = Path.cwd() if file == "-" else Path(file).resolve().parent
        result = client.submit(text, workdir=here if _is_local(client.url) else None)
    if as_json:
        print_json(result)
        return
    w = result["workload"]
    console.print(f"sweep [bold]{w['id']}[/bold] ({w['name']}) submitted: {status_text(w['status'])}; follow it "
                  f"with `gpupool sweep show {w['name']}`")


@sweep_app.command()
@handle_errors
def show(sweep: SweepArg,
         plot: Annotated[Path | None, typer.Option("--plot", help="Write a PNG with the optimisation history, the "
                                                  "parameter importances and parallel coordinates.")] = None,
         as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """A sweep's trials (parameters, value, state, duration) and its best trial."""
    with make_light_client() as client:
        detail = client.sweep(sweep)
    if plot is not None:
        from gpupool.api.sweep_schemas import SweepDetail  # noqa: PLC0415  (only with --plot)
        from gpupool.cli.sweep_plots import plot as draw  # noqa: PLC0415  (matplotlib only when asked)

        panels = draw(SweepDetail.model_validate(detail), plot)
        if not as_json:
            console.print(f"wrote {plot}: {', '.join(panels)}")
    if as_json:
        print_json(detail)
        return
    _print(detail)


@sweep_app.command()
@handle_errors
def best(sweep: SweepArg, as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """The best completed trial: its value and parameters (exit 4 when none has completed yet)."""
    with make_light_client() as client:
        detail = client.sweep(sweep)
    b = detail.get("best")
    if b is None:
        raise ConflictError(f"sweep {detail['name']} has no completed trial yet ({detail['status']})")
    if as_json:
        typer.echo(json.dumps({"sweep": detail["id"], "trial": b["number"], "value": b["value"],
                               "params": b["params"], "metric": detail["metric"], "direction": detail["direction"],
                               "workload_id": b.get("workload_id")}, indent=2))
        return
    console.print(f"best trial {b['number']}: {detail['metric']} = {b['value']:.6g}  {_params(b['params'])}")


@sweep_app.command()
@handle_errors
def stop(sweep: SweepArg, as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """Stop a sweep early: no new trials; running ones are stopped and told failed (completed ones stay)."""
    with make_light_client() as client:
        detail = client.sweep(sweep)
        workload = client.cancel(detail["id"])
    if as_json:
        print_json(workload)
        return
    console.print(f"sweep {detail['id']} ({detail['name']}) stopped: {status_text(workload['status'])}")


def _params(params: dict[str, object]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _print(detail: JsonObject) -> None:
    metric = detail["metric"]
    ended = sum(t["state"] in ("complete", "pruned", "fail", "stopped") for t in detail["trials"])
    console.print(f"sweep [bold]{detail['id']}[/bold] ({detail['name']}, project {detail['project']}): "
                  f"{status_text(detail['status'])}; {ended} of {detail['planned']} trials ended, at most "
                  f"{detail['parallel']} at once; {detail['direction']} {metric}")
    if detail["message"]:
        console.print(f"  {detail['message']}")
    rows = table("trial", "state", metric, "step", "params", "job", "duration", "note")
    for t in detail["trials"]:
        rows.add_row(*_row(t))
    console.print(rows)
    b = detail.get("best")
    if b is not None:
        console.print(f"best: trial {b['number']}, {metric} = {b['value']:.6g}  {_params(b['params'])}")


def _row(t: JsonObject) -> tuple[str, ...]:
    value, workload_id, duration_s, last_step = (t.get(k) for k in ("value", "workload_id", "duration_s", "last_step"))
    value_text = "-" if value is None else f"{value:.6g}"
    job = "-" if workload_id is None else f"{workload_id} ({t.get('status')})"
    duration = "-" if duration_s is None else f"{duration_s:.1f}s"
    step = "-" if last_step is None else str(last_step)
    return str(t["number"]), t["state"], value_text, step, _params(t["params"]), job, duration, t.get("message", "")
