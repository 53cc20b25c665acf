"""Node commands: list nodes and their GPUs, show one, and the administrators' GPU changes (sharing mode, MIG
layout, clearing an unhealthy mark)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated
from urllib.parse import quote

import typer

from gpupool.cli.common import JSON_HELP, amounts, console, handle_errors, make_light_client, print_json, table
from gpupool.client.light import API
from gpupool.domain.display import format_gpu

if TYPE_CHECKING:
    from gpupool.client.light import JsonObject

JsonOption = Annotated[bool, typer.Option("--json", help=JSON_HELP)]
NodeArg = Annotated[str, typer.Argument(help="The node (from `gpupool nodes`).")]
GpuArg = Annotated[int, typer.Argument(help="The GPU's index on the node.", min=0)]
nodes_app = typer.Typer(help="Nodes and their GPUs. Without a command: list them.", invoke_without_command=True)


def _mode(g: JsonObject) -> str:
    if g["mode"] == "mig":
        return f"mig ({len(g['mig_instances'])} instance{'s' if len(g['mig_instances']) != 1 else ''})"
    return g["mode"]


def _health(g: JsonObject) -> str:
    return "[green]ok[/green]" if g["healthy"] else f"[red]{g['health'] or 'unhealthy'}[/red]"


def _mps(g: JsonObject) -> str:
    if g["mps"] is None:
        return "-"
    style = {"running": "green", "failed": "red"}.get(g["mps"]["state"], "")
    return f"[{style}]{g['mps']['state']}[/{style}]" if style else g["mps"]["state"]


def _mig(g: JsonObject) -> str:
    if not g["mig_instances"]:
        return g["mig_layout"] or "-"
    return ", ".join(f"{m['position']}:{m['profile']}{'*' if m['allocated'] else ''}" for m in g["mig_instances"])


def _amounts(resources: JsonObject) -> str:
    return amounts(resources["cpu_milli"], resources["memory_mib"], resources["gpu_milli"])


def gpu_table(node_list: list[JsonObject], title: str | None = "GPUs") -> object:
    """One row per GPU: mode, allocation, health, MIG instances (* = in use), MPS daemon."""
    out = table("NODE", "GPU", "MODEL", "MEMORY", "MODE", "ALLOCATED", "HEALTH", "MIG INSTANCES", "MPS", title=title)
    for n in node_list:
        for g in n["gpus"]:
            model = g["model"] + (" (simulated)" if g["simulated"] else "")
            out.add_row(n["name"], str(g["index"]), model, amounts(None, g["memory_mib"], None), _mode(g),
                        format_gpu(g["allocated_milli"]), _health(g), _mig(g), _mps(g))
    return out


@nodes_app.callback()
@handle_errors
def nodes(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List the nodes of the pool (capacity, what is allocated) and their GPUs (sharing mode, health, MIG
    instances, MPS daemon; simulated ones are marked)."""
    if ctx.invoked_subcommand is not None:
        return
    with make_light_client() as client:
        found = client.nodes()
    if as_json:
        print_json(found)
        return
    out = table("NODE", "SOURCE", "SCHEDULABLE", "CPU (used/total)", "MEMORY (used/total)", "GPUS")
    for n in found:
        models = sorted({g["model"] for g in n["gpus"]})
        gpus = f"{format_gpu(n['allocated']['gpu_milli'])}/{len(n['gpus'])} {'|'.join(models)}" if n["gpus"] else "-"
        if n["simulated_gpus"]:
            gpus += " (simulated)"
        used, total = n["allocated"], n["capacity"]
        out.add_row(n["name"], n["source"], "yes" if n["schedulable"] else "no",
                    f"{amounts(used['cpu_milli'], None, None)} / {amounts(total['cpu_milli'], None, None)}",
                    f"{amounts(None, used['memory_mib'], None)} / {amounts(None, total['memory_mib'], None)}",
                    gpus)
    console.print(out)
    if any(n["gpus"] for n in found):
        console.print(gpu_table(found))


@nodes_app.command("show")
@handle_errors
def show(node: NodeArg, as_json: JsonOption = False) -> None:
    """Show one node: capacity, GPU driver, and every GPU with its mode, health, MIG instances and MPS daemon."""
    with make_light_client() as client:
        n = client.node(node)
    if as_json:
        print_json(n)
        return
    lines = [f"capacity    {_amounts(n['capacity'])}", f"allocated   {_amounts(n['allocated'])}",
             f"schedulable {'yes' if n['schedulable'] else 'no'}    source {n['source']}",
             f"GPUs        backend {n['gpu_backend'] or '-'}    driver {n['driver_version'] or '-'}    "
             f"CUDA {n['cuda_version'] or '-'}" + ("    simulated" if n["simulated_gpus"] else "")]
    if n["gpu_unavailable"]:
        lines.append(f"no GPUs     {n['gpu_unavailable']}")
    from rich.panel import Panel  # noqa: PLC0415  (lazy: start-up time)

    console.print(Panel("\n".join(lines), title=f"node {n['name']}", expand=False))
    if n["gpus"]:
        console.print(gpu_table([n], title=None))
    for g in n["gpus"]:
        for m in g["mig_instances"]:
            console.print(f"  GPU {g['index']} MIG {m['position']}: {m['profile']} {m['uuid']}"
                          + (" (in use)" if m["allocated"] else ""))
        if g["mps"] is not None and g["mps"]["message"]:
            console.print(f"  GPU {g['index']} MPS: {g['mps']['message']}")


def _print_change(change: JsonObject, as_json: bool) -> None:
    if as_json:
        print_json(change)
        return
    console.print(change["message"])
    if change["pending_reset"]:
        console.print("[yellow]a GPU reset is pending: run the command again once the card was reset[/yellow]")
    g = change["gpu"]
    console.print(f"GPU {g['index']} of {change['node']}: mode {_mode(g)}, health {_health(g)}, MIG {_mig(g)}, "
                  f"MPS {_mps(g)}")


@nodes_app.command("set-sharing")
@handle_errors
def set_sharing(node: NodeArg, gpu: GpuArg,
                mode: Annotated[str, typer.Argument(help="exclusive, shared (time-slicing), mps or mig.")],
                as_json: JsonOption = False) -> None:
    """Set a GPU's sharing mode (administrators). Refused while running work on the card would not stay
    valid; MPS daemons are started or stopped to match."""
    with make_light_client() as client:
        change = client.send("PUT", f"{API}/nodes/{quote(node)}/gpus/{gpu}/sharing",
                             {"mode": mode.strip().lower()})
    _print_change(change, as_json)


@nodes_app.command("set-mig")
@handle_errors
def set_mig(node: NodeArg, gpu: GpuArg,
            layout: Annotated[str, typer.Argument(help="MIG profiles, e.g. 3g.40gb,2g.20gb,1g.10gb,1g.10gb; "
                                                       "'none' turns MIG off.")],
            as_json: JsonOption = False) -> None:
    """Partition a GPU into MIG instances (administrators); checked against the model's profile catalog and
    refused while work runs on the card."""
    with make_light_client() as client:
        change = client.send("PUT", f"{API}/nodes/{quote(node)}/gpus/{gpu}/mig", {"layout": layout})
    _print_change(change, as_json)


@nodes_app.command("clear-unhealthy")
@handle_errors
def clear_unhealthy(node: NodeArg, gpu: GpuArg, as_json: JsonOption = False) -> None:
    """Declare a GPU healthy again after an XID or ECC error, e.g. after a GPU reset (administrators)."""
    with make_light_client() as client:
        change = client.send("POST", f"{API}/nodes/{quote(node)}/gpus/{gpu}/clear-unhealthy")
    _print_change(change, as_json)


def register(app: typer.Typer) -> None:
    """Add the node commands to the root app."""
    app.add_typer(nodes_app, name="nodes")
