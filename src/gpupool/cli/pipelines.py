"""`gpupool pipeline ...`: submit pipelines, start runs, follow them, retry, cancel, pause and resume."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gpupool.cli.common import (
    JSON_HELP,
    ago,
    console,
    handle_errors,
    make_light_client,
    print_json,
    status_text,
    table,
)

if TYPE_CHECKING:
    from gpupool.client.light import JsonObject
    from gpupool.client.light_pipelines import LightPipelines

pipeline_app = typer.Typer(name="pipeline", no_args_is_help=True,
                           help="Pipelines: DAGs of job steps, run by hand or on a cron schedule.")
JsonOpt = Annotated[bool, typer.Option("--json", help=JSON_HELP)]
ProjectOpt = Annotated[str | None, typer.Option("--project", help="The project, when the name is in several.")]
RunArg = Annotated[int, typer.Argument(help="The run id (`gpupool pipeline runs NAME` lists them).")]
NameArg = Annotated[str, typer.Argument(help="The pipeline's name.")]
STATE_STYLES = {"waiting": "dim", "submitted": "cyan", "succeeded": "green", "failed": "red", "skipped": "yellow",
                "upstream_failed": "red", "cancelled": "magenta"}


def _client() -> LightPipelines:
    from gpupool.client.light_pipelines import LightPipelines  # noqa: PLC0415  (lazy: start-up time)

    return LightPipelines(make_light_client())


def _params(pairs: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint="-p")
        out[key.strip()] = value
    return out


@pipeline_app.command("submit")
@handle_errors
def submit(file: Annotated[str, typer.Argument(help="A YAML pipeline spec (kind: pipeline), or - for stdin.")],
           no_run: Annotated[bool, typer.Option("--no-run", help="Only store it (a pipeline without a schedule "
                                                "otherwise starts a run at once).")] = False,
           as_json: JsonOpt = False) -> None:
    """Store a pipeline (replacing the one of that name) and, unless it has a schedule or --no-run, run it."""
    text = sys.stdin.read() if file == "-" else Path(file).read_text()
    import yaml  # noqa: PLC0415

    data = yaml.safe_load(text)
    scheduled = isinstance(data, dict) and data.get("schedule") is not None
    result = _client().submit(text, run=not (no_run or scheduled))
    if as_json:
        print_json(result)
        return
    p, started = result["pipeline"], result.get("run")
    console.print(f"pipeline [bold]{p['name']}[/bold] stored in project {p['project']}")
    if p.get("next_fire_at") is not None:
        console.print(f"next fire: {_when(p['next_fire_at'])}")
    if started is not None:
        console.print(f"run {started['id']} started; follow it with `gpupool pipeline show {started['id']}`")


@pipeline_app.command("run")
@handle_errors
def run(name: NameArg,
        param: Annotated[list[str] | None, typer.Option("-p", "--param", help="Override a param: -p epochs=1 "
                                                        "(repeat for more).")] = None,
        project: ProjectOpt = None, as_json: JsonOpt = False) -> None:
    """Start a run of a stored pipeline now."""
    info = _client().run(name, _params(param), project=project)
    if as_json:
        print_json(info)
        return
    console.print(f"run {info['id']} of pipeline {info['pipeline']} started with params {info['params']}")


@pipeline_app.command("runs")
@handle_errors
def runs(name: NameArg, project: ProjectOpt = None,
         limit: Annotated[int, typer.Option(help="How many runs, newest first.")] = 20,
         as_json: JsonOpt = False) -> None:
    """The latest runs of a pipeline, and its schedule's latest fires (ran or skipped, and why)."""
    client = _client()
    page = client.runs(name, project=project, limit=limit)
    info = client.get(name, project=project)
    if as_json:
        print_json({"runs": page["items"], "fires": info.get("fires", [])})
        return
    out = table("RUN", "STATUS", "STEPS", "STARTED", "MESSAGE")
    for r in page["items"]:
        steps = r.get("steps", [])
        done = sum(1 for s in steps if s["state"] == "succeeded")
        out.add_row(str(r["id"]), status_text(r["status"]), f"{done}/{len(steps)}", ago(r["submitted_at"]),
                    r["message"])
    console.print(out)
    fired, next_fire = info.get("fires", []), info.get("next_fire_at")
    if fired or next_fire is not None:
        state = "paused" if info["paused"] else f"next fire {_when(next_fire)}"
        fires = table("FIRE", "OUTCOME", "RUN", "REASON", title=f"schedule ({state})")
        for f in fired:
            fires.add_row(_when(f["fire_at"]), f["outcome"], str(f.get("run_id") or "-"), f["reason"])
        console.print(fires)


@pipeline_app.command("show")
@handle_errors
def show(run_id: RunArg, as_json: JsonOpt = False) -> None:
    """A run as a tree of its steps (each under the step it needs), with state, duration and reason."""
    info = _client().show(run_id)
    if as_json:
        print_json(info)
        return
    console.print(f"run {info['id']} of [bold]{info['pipeline']}[/bold] ({info['project']}): "
                  f"{status_text(info['status'])} - {info['message']}")
    console.print(f"params {info['params']}; run dir {info['run_dir']}")
    console.print(render_tree(info))


def render_tree(info: JsonObject) -> Any:
    """The steps of a run (pipeline_schemas.RunInfo as JSON) as a Rich tree: a step appears under each step it
    needs (roots: steps that need none)."""
    from rich.tree import Tree  # noqa: PLC0415

    root = Tree(f"{info['pipeline']} #{info['id']}")
    steps = info.get("steps", [])
    children: dict[str, list[JsonObject]] = {}
    for step in steps:
        for need in step["needs"]:
            children.setdefault(need, []).append(step)

    def add(parent: Any, step: JsonObject) -> None:
        node = parent.add(_step_line(step))
        for child in children.get(step["name"], []):
            add(node, child)

    for step in steps:
        if not step["needs"]:
            add(root, step)
    return root


def _step_line(step: JsonObject) -> str:
    style = STATE_STYLES.get(step["state"], "")
    state = f"[{style}]{step['state']}[/{style}]" if style else step["state"]
    duration = ""
    started, finished = step.get("started_at"), step.get("finished_at")
    if started is not None:
        duration = f" {_duration((finished if finished is not None else time.time()) - started)}"
    workload = f" (workload {step['workload_id']})" if step.get("workload_id") else ""
    outputs = f" outputs {step['outputs']}" if step.get("outputs") else ""
    return f"[bold]{step['name']}[/bold] {state}{duration}{workload}{outputs} - {step['reason']}"


@pipeline_app.command("retry")
@handle_errors
def retry(run_id: RunArg, as_json: JsonOpt = False) -> None:
    """Re-run a failed or cancelled run from its failed steps, keeping the steps that succeeded."""
    info = _client().retry(run_id)
    if as_json:
        print_json(info)
        return
    again = [s["name"] for s in info.get("steps", []) if s["state"] == "waiting"]
    console.print(f"run {info['id']} retries run {info.get('retry_of')}: re-runs {', '.join(again) or 'nothing'}")


@pipeline_app.command("cancel")
@handle_errors
def cancel(run_id: RunArg, as_json: JsonOpt = False) -> None:
    """Cancel a run and every step of it."""
    info = _client().cancel(run_id)
    if as_json:
        print_json(info)
        return
    console.print(f"run {info['id']} {info['status']}; its steps are being cancelled")


@pipeline_app.command("pause")
@handle_errors
def pause(name: NameArg, project: ProjectOpt = None, as_json: JsonOpt = False) -> None:
    """Pause a pipeline's schedule (runs already started go on)."""
    info = _client().pause(name, project=project)
    print_json(info) if as_json else console.print(f"schedule of {info['name']} paused")


@pipeline_app.command("resume")
@handle_errors
def resume(name: NameArg, project: ProjectOpt = None, as_json: JsonOpt = False) -> None:
    """Resume a pipeline's schedule; fires missed while paused are not run."""
    info = _client().resume(name, project=project)
    print_json(info) if as_json else console.print(f"schedule of {info['name']} resumed; next fire "
                                                   f"{_when(info.get('next_fire_at'))}")


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(at))


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
