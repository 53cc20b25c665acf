"""`gpupool report usage`: GPU-hours allocated, busy and allocated-but-idle per project or user per period."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

from gpupool.cli.common import JSON_HELP, console, handle_errors, make_light_client, print_json, table
from gpupool.client.light import API


def _date(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).date().isoformat()


@handle_errors
def usage_report(
        by: Annotated[str, typer.Option("--by", help="Group by project or user.")] = "project",
        since: Annotated[str, typer.Option("--since", help="How far back, e.g. 30d, 7d, 12h.")] = "30d",
        period: Annotated[str, typer.Option("--period", help="Rows per day, week or month (UTC).")] = "day",
        as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV (for a spreadsheet) instead of a table.")]
        = False,
        as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """GPU-hours allocated, actually busy (from GPU utilisation) and allocated-but-idle, per project or user
    per day, week or month. Members see their own projects; administrators every project."""
    with make_light_client() as client:
        if as_csv:
            typer.echo(client.get_text(f"{API}/usage", by=by, period=period, since=since, format="csv"), nl=False)
            return
        report = client.get(f"{API}/usage", by=by, period=period, since=since)
    if as_json:
        print_json(report)
        return
    idle_pct = report["idle_max_pct"]
    out = table(period.upper(), by.upper(), "ALLOCATED GPU-H", "BUSY GPU-H", "IDLE GPU-H", "SAMPLED GPU-H",
                "WORKLOADS", title=f"GPU usage by {by} per {period}, last {since} (idle: <= {idle_pct:g}% utilisation)")
    for line in report["lines"]:
        out.add_row(_date(line["period_start"]), line["group"], f"{line['allocated_gpu_h']:.2f}",
                    f"{line['busy_gpu_h']:.2f}", f"{line['idle_gpu_h']:.2f}", f"{line['observed_gpu_h']:.2f}",
                    str(line["workloads"]))
    console.print(out)
    console.print(f"total: {report['total_allocated_gpu_h']:.2f} GPU-h allocated, "
                  f"{report['total_busy_gpu_h']:.2f} busy, {report['total_idle_gpu_h']:.2f} idle")
