"""Workload commands: submit, ls, show, logs, cancel."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated
from urllib.parse import urlparse

import typer
from rich.panel import Panel

from gpupool.cli.common import (
    JSON_HELP,
    ago,
    amounts,
    console,
    handle_errors,
    make_client,
    print_json,
    status_text,
    table,
)
from gpupool.domain.specs import priority_name
from gpupool.server.api import schemas

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def _is_local(url: str) -> bool:
    return (urlparse(url).hostname or "") in LOOPBACK_HOSTS


@handle_errors
def submit(file: Annotated[str, typer.Argument(help="A YAML workload spec, or - to read it from stdin.")],
           key: Annotated[str | None, typer.Option("--key", help="Idempotency key: submitting again with the same "
                                                   "key returns the same workload.")] = None,
           wait: Annotated[bool, typer.Option(help="Wait until the workload ends; exit 1 unless it succeeded.")]
           = False,
           as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """Submit a workload from a YAML spec (kind: job, ...). On a server on this machine, a spec without
    `workdir:` runs in the directory you submit from."""
    text = sys.stdin.read() if file == "-" else _read(file)
    with make_client() as client:
        workdir = Path.cwd() if _is_local(client.url) else None
        result = client.submit(text, idempotency_key=key, workdir=workdir)
        workload = result.workload
        if wait:
            workload = client.wait(workload.id, timeout_s=7 * 86400)
    if as_json:
        print_json(result if not wait else workload)
    else:
        verb = "submitted" if result.created else "already submitted (same key)"
        console.print(f"workload [bold]{workload.id}[/bold] ({workload.name}) {verb} to queue {workload.queue}: "
                      f"{status_text(workload.status)}")
        if not wait:
            console.print(f"  follow it with `gpupool show {workload.id}` and `gpupool logs -f {workload.id}`")
    if wait and workload.status != "succeeded":
        raise typer.Exit(1)


def _read(file: str) -> str:
    path = Path(file)
    try:
        return path.read_text()
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {file}: {exc.strerror}", param_hint="FILE") from None


def _ago(timestamp: float | None) -> str:
    return "-" if timestamp is None else f"{ago(timestamp)} ago"


def _why(w: schemas.WorkloadSummary) -> str:
    if w.status == "pending":
        position = f"#{w.queue_position} in queue; " if w.queue_position else ""
        return position + (w.pending_reason or "waiting for the scheduler")
    return w.message


@handle_errors
def ls(project: Annotated[str | None, typer.Option("--project", "-p", help="Only this project.")] = None,
       status: Annotated[list[str] | None, typer.Option("--status", "-s", help="Only these statuses "
                                                         "(repeatable), e.g. -s pending -s running.")] = None,
       show_all: Annotated[bool, typer.Option("--all", "-a", help="Include ended workloads.")] = False,
       limit: Annotated[int, typer.Option(help="At most this many (newest first).", min=1, max=1000)] = 50,
       as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """List workloads: status, and for pending ones their position in the queue and why they wait."""
    statuses = status or (None if show_all else ["pending", "scheduled", "starting", "running", "preempted"])
    with make_client() as client:
        page = client.list_workloads(project=project, status=statuses, limit=limit)
    if as_json:
        print_json(page)
        return
    now = time.time()
    out = table("ID", "NAME", "PROJECT", "USER", "STATUS", "PRIORITY", "REPLICAS", "AGE", "WHY / POSITION")
    for w in page.items:
        out.add_row(str(w.id), w.name, w.project, w.user, status_text(w.status), priority_name(w.priority),
                    str(w.replicas), ago(w.submitted_at, now), _why(w))
    console.print(out)
    if page.total > len(page.items):
        console.print(f"[dim]{len(page.items)} of {page.total} shown; use --limit or --status[/dim]")
    elif not page.items:
        console.print("[dim]no workloads" + ("" if show_all or status else " running or waiting; --all shows "
                                               "ended ones") + "[/dim]")


@handle_errors
def show(workload_id: Annotated[int, typer.Argument(help="The workload id (from `gpupool ls`).")],
         as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """Show one workload: status, why it waits, its replicas and its history."""
    with make_client() as client:
        w = client.get_workload(workload_id)
    if as_json:
        print_json(w)
        return
    lines = [f"status      {status_text(w.status)}  ({w.message})" if w.message else f"status  {w.status}",
             f"kind        {w.kind}    project {w.project}    queue {w.queue}    user {w.user}",
             f"priority    {priority_name(w.priority)}    replicas {w.replicas}    run {w.attempt}    "
             f"retries used {w.retries_used}    preempted {w.preemptions}x",
             f"submitted   {_ago(w.submitted_at)}    started {_ago(w.started_at)}    ended {_ago(w.finished_at)}"]
    if w.status == "pending":
        lines.append(f"waiting     #{w.queue_position or '?'} in queue {w.queue}: "
                     f"{w.pending_reason or 'waiting for the scheduler'}")
    console.print(Panel("\n".join(lines), title=f"workload {w.id}: {w.name}", expand=False))
    if w.replica_list:
        replicas = table("REPLICA", "ROLE", "NODE", "STATE", "EXIT", "RESOURCES", "GPUS", title="replicas")
        for r in w.replica_list:
            gpus = ", ".join(f"{g.index}" + (f" ({g.milli / 1000:g})" if g.milli < 1000 else "") for g in r.gpus)
            replicas.add_row(str(r.number), r.role, r.node, status_text(r.state), "-" if r.exit_code is None else
                             str(r.exit_code), amounts(r.cpu_milli, r.memory_mib, None), gpus or "-")
        console.print(replicas)
    events = table("AGO", "CHANGE", "REASON", title="history")
    for e in w.events[-15:]:
        change = f"{e.from_status} -> {e.to_status}" if e.to_status else (f"replica {e.replica}" if e.replica is not
                                                                           None else "")
        events.add_row(ago(e.at), change, e.reason)
    console.print(events)


@handle_errors
def logs(workload_id: Annotated[int, typer.Argument(help="The workload id.")],
         follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the replica ends.")]
         = False,
         replica: Annotated[int, typer.Option("--replica", "-r", help="Which replica (0 is the first).", min=0)]
         = 0,
         tail: Annotated[int | None, typer.Option("--tail", "-n", help="Only the last N lines.", min=0)] = None,
         as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line: {replica, line}.")]
         = False) -> None:
    """Print a replica's output (stdout and stderr) of the workload's current run."""
    with make_client() as client:
        for line in client.logs(workload_id, replica=replica, tail=tail, follow=follow):
            typer.echo(json.dumps({"replica": replica, "line": line}) if as_json else line)


@handle_errors
def cancel(workload_id: Annotated[int, typer.Argument(help="The workload id.")],
           as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """Cancel a workload: pending ones end at once, running replicas are stopped (SIGTERM, then SIGKILL)."""
    with make_client() as client:
        w = client.cancel(workload_id)
    if as_json:
        print_json(w)
    else:
        console.print(f"workload {w.id} ({w.name}): {status_text(w.status)}")


def register(app: typer.Typer) -> None:
    """Add the workload commands to the root app."""
    app.command()(submit)
    app.command("ls")(ls)
    app.command()(show)
    app.command()(logs)
    app.command()(cancel)
