"""Monitoring commands: `gpupool top` (a live table of every GPU and who uses it) and `gpupool report idle`
(the wasted-GPU report for administrators)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer

from gpupool.cli.common import JSON_HELP, console, handle_errors, make_light_client, print_json, table
from gpupool.cli.usage import usage_report
from gpupool.client.light import API
from gpupool.domain.display import format_gpu, format_memory

if TYPE_CHECKING:
    from rich.table import Table

    from gpupool.client.light import JsonObject

MIB = 1024 * 1024
report_app = typer.Typer(help="Reports: `gpupool report idle` (wasted GPUs), `gpupool report usage` (GPU-hours).",
                         no_args_is_help=True)


def _pct(value: float | None) -> str:
    if value is None:
        return "-"
    style = "green" if value >= 50 else "yellow" if value > 5 else "dim"
    return f"[{style}]{value:.0f}%[/{style}]"


def _memory(used: int | None, total: int | None) -> str:
    if used is None:
        return "-"
    text = format_memory(used // MIB)
    return f"{text} / {format_memory(total // MIB)}" if total else text


def _users(g: JsonObject) -> str:
    parts = []
    for u in g["users"]:
        who = f"{u['workload_id']}" if u["workload_id"] is not None else f"({u['project']})"
        share = f" {format_gpu(u['milli'])}" if u["milli"] < 1000 else ""
        used = u["memory_used_bytes"]
        memory = f" {format_memory(used // MIB)}" if used is not None else ""
        allowed = f"/{format_memory(u['memory_mib'])}" if used is not None and u["memory_mib"] else ""
        over = " [red]over[/red]" if used is not None and u["memory_mib"] and used // MIB > u["memory_mib"] else ""
        parts.append(f"{who} r{u['replica']}{share}{memory}{allowed}{over}")
    if g["mps_server_memory_bytes"]:
        parts.append(f"[dim]MPS server {format_memory(g['mps_server_memory_bytes'] // MIB)}[/dim]")
    if g["unowned_memory_bytes"]:
        parts.append(f"[dim]other {format_memory(g['unowned_memory_bytes'] // MIB)}[/dim]")
    return ", ".join(parts) or "-"


def top_table(gpus: list[JsonObject]) -> Table:
    """One row per GPU: utilisation, memory, power, temperature, health and the workloads using it
    (id, replica, share, memory used / allowed)."""
    out = table("NODE", "GPU", "MODEL", "MODE", "UTIL", "MEMORY", "POWER", "TEMP", "HEALTH", "WORKLOADS (id replica "
                "share memory)", title=f"gpupool top — {time.strftime('%H:%M:%S')}")
    for g in gpus:
        health = "[green]ok[/green]" if g["healthy"] else f"[red]{g['health'] or 'unhealthy'}[/red]"
        out.add_row(g["node"], str(g["index"]), g["model"] + (" (simulated)" if g["simulated"] else ""), g["mode"],
                    _pct(g["utilization_pct"]), _memory(g["memory_used_bytes"], g["memory_total_bytes"]),
                    "-" if g["power_w"] is None else f"{g['power_w']:.0f} W",
                    "-" if g["temperature_c"] is None else f"{g['temperature_c']:.0f} C", health, _users(g))
    if not gpus:
        out.add_row("-", "-", "no GPUs in the pool", "", "", "", "", "", "", "")
    notes = sorted({f"{g['node']}: {g['attribution_note']}" for g in gpus if g["attribution_note"]})
    if notes:
        out.caption = "[yellow]" + "\n".join(notes) + "[/yellow]"
    return out


@handle_errors
def top(once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
        interval: Annotated[float, typer.Option(help="Seconds between refreshes.", min=0.2)] = 2.0,
        as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP + " Implies --once.")] = False) -> None:
    """A live table of every GPU: utilisation, memory, power, temperature, health, and which workloads use
    it with the GPU memory their processes hold (Ctrl-C to quit)."""
    with make_light_client() as client:
        if as_json or once:
            gpus = client.gpus_now()
            print_json(gpus) if as_json else console.print(top_table(gpus))
            return
        from rich.live import Live  # noqa: PLC0415  (lazy: start-up time)

        with Live(top_table(client.gpus_now()), console=console.get(), refresh_per_second=4) as live:
            try:
                while True:
                    time.sleep(interval)
                    live.update(top_table(client.gpus_now()))
            except KeyboardInterrupt:
                return


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


@report_app.command("idle")
@handle_errors
def idle(as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """Wasted GPUs: allocations whose card has been idle (utilisation at or below the threshold) for longer
    than the idle threshold, longest first (administrators)."""
    with make_light_client() as client:
        report = client.get(f"{API}/reports/idle")
    if as_json:
        print_json(report)
        return
    out = table("NODE", "GPU", "WORKLOAD", "NAME", "PROJECT", "USER", "REPLICA", "HOLDS", "IDLE FOR",
                title=f"GPU allocations idle (<= {report['idle_max_pct']:g}% busy) for "
                      f"{_duration(report['threshold_s'])} or more")
    for a in report["allocations"]:
        out.add_row(a["node"], str(a["gpu"]), str(a["workload_id"]), a["workload"], a["project"], a["user"],
                    str(a["replica"]), f"{format_gpu(a['milli'])} GPU", _duration(a["idle_for_s"]))
    console.print(out)
    if report["allocations"]:
        console.print(f"{format_gpu(report['wasted_gpu_milli'])} GPU held by idle allocations")
    else:
        console.print("[dim]no idle allocations[/dim]")


report_app.command("usage")(usage_report)


def register(app: typer.Typer) -> None:
    """Add `top` and `report` to the root app."""
    app.command()(top)
    app.add_typer(report_app, name="report")
