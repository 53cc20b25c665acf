"""Workload commands: submit, ls, show, logs, cancel (and, from cli/workflow.py, wait, resubmit, whoami).

Commands that take a workload accept its id or its name (the newest workload of that name you can see), and
for a task of a job array ID.INDEX (or NAME.INDEX), e.g. `gpupool logs 12.7`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlparse

import typer

from gpupool.cli.common import (
    JSON_HELP,
    ago,
    amounts,
    console,
    err_console,
    handle_errors,
    make_light_client,
    print_json,
    status_text,
    table,
)
from gpupool.domain.errors import ConflictError, NotFoundError

if TYPE_CHECKING:
    from gpupool.client.light import JsonObject, LightClient

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
HISTORY_SHOWN = 15  # events `show` prints without --all: a screenful with the panel and replicas
TASKS_SHOWN = 50  # a job array's tasks `show` prints without --all: a few screens; the counts cover the rest
ACTIVE = ["pending", "scheduled", "starting", "running", "preempted"]
WAITING_TO_START = ("pending", "scheduled", "starting")  # `logs -f` waits while a workload is in one of these
START_POLL_S = 0.5  # how often `logs -f` asks whether it started: a start takes ~0.2-1 s, so little delay
WorkloadArg = Annotated[str, typer.Argument(help="The workload's id, or its name (the newest of that name); "
                                            "ID.INDEX for a task of a job array.")]


def _is_local(url: str) -> bool:
    return (urlparse(url).hostname or "") in LOOPBACK_HOSTS


def resolve(client: LightClient, ref: str, *, active: bool = False) -> int:
    """The id of workload `ref`: an id as is, else the newest workload of that name the caller can see (with
    `active`, the newest that has not ended, so that `cancel NAME` never aims at an old run). `REF.INDEX` is
    task INDEX of the job array REF names."""
    base, dot, index = ref.rpartition(".")
    if dot and base and index.isdigit():
        return int(client.array_task(resolve(client, base, active=active), int(index))["id"])
    if ref.isdigit():
        return int(ref)
    page = client.list_workloads(name=ref, status=ACTIVE if active else None, limit=1)
    if not page["items"]:
        which = "running or waiting " if active else ""
        raise NotFoundError(f"no {which}workload named {ref!r}; `gpupool ls --all` lists them")
    return int(page["items"][0]["id"])


@handle_errors
def submit(file: Annotated[str, typer.Argument(help="A YAML workload spec, or - to read it from stdin.")],
           key: Annotated[str | None, typer.Option("--key", help="Idempotency key: submitting again with the same "
                                                   "key returns the same workload.")] = None,
           wait: Annotated[bool, typer.Option(help="Wait until the workload ends; exit 1 unless it succeeded.")]
           = False,
           as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """Submit a workload from a YAML spec (kind: job, ...). On a server on this machine, a spec without
    `workdir:` runs in the spec file's directory, so paths in its command are relative to the spec file
    (for a spec read from stdin: the directory you submit from)."""
    text = sys.stdin.read() if file == "-" else _read(file)
    with make_light_client() as client:
        here = Path.cwd() if file == "-" else Path(file).resolve().parent
        result = client.submit(text, idempotency_key=key, workdir=here if _is_local(client.url) else None)
        workload = result["workload"]
        for warning in result.get("warnings", ()):
            err_console.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)
        if wait:
            workload = client.wait(workload["id"], timeout_s=7 * 86400)
    if as_json:
        print_json(result if not wait else workload)
    else:
        wid = workload["id"]
        verb = "submitted" if result["created"] else "already submitted (same key)"
        console.print(f"workload [bold]{wid}[/bold] ({workload['name']}) {verb} to queue {workload['queue']}: "
                      f"{status_text(workload['status'])}")
        if not wait:
            console.print(f"  follow it with `gpupool show {wid}` and `gpupool logs -f {wid}`")
    if wait and workload["status"] != "succeeded":
        raise typer.Exit(1)


def _read(file: str) -> str:
    path = Path(file)
    try:
        return path.read_text()
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {file}: {exc.strerror}", param_hint="FILE") from None


def _ago(timestamp: float | None) -> str:
    return "-" if timestamp is None else f"{ago(timestamp)} ago"


def _why(w: JsonObject) -> str:
    if w.get("array") is not None:
        return array_counts(w["array"])
    if w["status"] == "pending":
        position = f"#{w['queue_position']} in queue; " if w.get("queue_position") else ""
        return position + (w.get("pending_reason") or "waiting for the scheduler")
    return str(w.get("message") or "")


def array_counts(array: JsonObject) -> str:
    """'array 0-19%3, 20 tasks: 3 running, 17 pending' (statuses in life-cycle order)."""
    from gpupool.domain.arrays import describe_counts  # noqa: PLC0415  (lazy: start-up time)

    counts = describe_counts(array.get("by_status") or {})
    return f"array {array['indices']}, {array['tasks']} tasks: {counts or 'none'}"


@handle_errors
def ls(project: Annotated[str | None, typer.Option("--project", "-p", help="Only this project.")] = None,
       status: Annotated[list[str] | None, typer.Option("--status", "-s", help="Only these statuses "
                                                         "(repeatable), e.g. -s pending -s running.")] = None,
       show_all: Annotated[bool, typer.Option("--all", "-a", help="Include ended workloads.")] = False,
       limit: Annotated[int, typer.Option(help="At most this many (newest first).", min=1, max=1000)] = 50,
       watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh every --interval seconds until Ctrl-C "
                                           "(with --json: one JSON page per line).")] = False,
       interval: Annotated[float, typer.Option(help="Seconds between refreshes with --watch.", min=0.2)] = 2.0,
       as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """List workloads: status, and for pending ones their position in the queue and why they wait."""
    statuses = status or (None if show_all else ACTIVE)
    with make_light_client() as client:
        if not watch:
            _print_page(client.list_workloads(project=project, status=statuses, limit=limit), as_json,
                        show_all or bool(status))
            return
        try:
            while True:
                page = client.list_workloads(project=project, status=statuses, limit=limit)
                if as_json:
                    typer.echo(json.dumps(page, separators=(",", ":"), ensure_ascii=False))
                else:
                    if sys.stdout.isatty():
                        console.clear()
                    console.print(f"[dim]every {interval:g} s; Ctrl-C to stop[/dim]")
                    _print_page(page, False, show_all or bool(status))
                sys.stdout.flush()
                time.sleep(interval)
        except KeyboardInterrupt:
            return


def _print_page(page: JsonObject, as_json: bool, filtered: bool) -> None:
    if as_json:
        print_json(page)
        return
    from gpupool.domain.display import priority_name  # noqa: PLC0415  (lazy: start-up time)

    now = time.time()
    out = table("ID", "NAME", "PROJECT", "USER", "STATUS", "PRIORITY", "REPLICAS", "AGE", "WHY / POSITION")
    items = page["items"]
    for w in items:
        out.add_row(str(w["id"]), w["name"], w["project"], w["user"], status_text(w["status"]),
                    priority_name(w["priority"]), str(w["replicas"]), ago(w["submitted_at"], now), _why(w))
    console.print(out)
    if page["total"] > len(items):
        console.print(f"[dim]{len(items)} of {page['total']} shown; use --limit or --status[/dim]")
    elif not items:
        console.print("[dim]no workloads" + ("" if filtered else " running or waiting; --all shows ended ones")
                      + "[/dim]")


@handle_errors
def show(workload: WorkloadArg,
         all_events: Annotated[bool, typer.Option("--all", "-a", help="The whole history (default: the last "
                                                  f"{HISTORY_SHOWN} events) and every task of a job array "
                                                  f"(default: the first {TASKS_SHOWN}).")] = False,
         as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """Show one workload: status, why it waits, its replicas and its history; a job array's tasks."""
    with make_light_client() as client:
        wid = resolve(client, workload)
        w = client.get_workload(wid, tasks=0 if all_events else TASKS_SHOWN)
        if all_events and w.get("array") is not None:  # every task, a page at a time
            w["tasks"] = list(client.all_array_tasks(wid))
    if as_json:
        print_json(w)
        return
    _print_workload(w, all_events)


def _print_workload(w: JsonObject, all_events: bool) -> None:
    from gpupool.domain.display import priority_name  # noqa: PLC0415  (lazy: start-up time)

    status, message = w["status"], w.get("message")
    lines = [f"status      {status_text(status)}  ({message})" if message else f"status  {status}",
             f"kind        {w['kind']}    project {w['project']}    queue {w['queue']}    user {w['user']}",
             f"priority    {priority_name(w['priority'])}    replicas {w['replicas']}    run {w.get('attempt', 0)}    "
             f"retries used {w.get('retries_used', 0)}    preempted {w.get('preemptions', 0)}x",
             f"submitted   {_ago(w['submitted_at'])}    started {_ago(w.get('started_at'))}    "
             f"ended {_ago(w.get('finished_at'))}"]
    if w.get("array") is not None:
        lines.append(f"tasks       {array_counts(w['array'])}")
    if w.get("array_index") is not None:
        lines.append(f"array task  {w['array_index']} of array {w['parent_id']} (`gpupool show {w['parent_id']}`)")
    if status == "pending" and w.get("array") is None:
        lines.append(f"waiting     #{w.get('queue_position') or '?'} in queue {w['queue']}: "
                     f"{w.get('pending_reason') or 'waiting for the scheduler'}")
    from rich.panel import Panel  # noqa: PLC0415  (lazy: start-up time)

    console.print(Panel("\n".join(lines), title=f"workload {w['id']}: {w['name']}", expand=False))
    if w.get("replica_list"):
        replicas = table("REPLICA", "ROLE", "NODE", "STATE", "EXIT", "RESOURCES", "GPUS", title="replicas")
        for r in w["replica_list"]:
            gpus = ", ".join(f"{g['index']}" + (f" ({g['milli'] / 1000:g})" if g["milli"] < 1000 else "")
                             for g in r.get("gpus", ()))
            code = r.get("exit_code")
            replicas.add_row(str(r["number"]), r["role"], r["node"], status_text(r["state"]),
                             "-" if code is None else str(code),
                             amounts(r.get("cpu_milli", 0), r.get("memory_mib", 0), None), gpus or "-")
        console.print(replicas)
    if w.get("tasks"):
        _print_tasks(w)
    _print_events(w, all_events)


def _print_events(w: JsonObject, all_events: bool) -> None:
    hidden = 0 if all_events else max(0, len(w.get("events", ())) - HISTORY_SHOWN)
    events = table("AGO", "CHANGE", "REASON", title="history")
    for e in w.get("events", [])[hidden:]:
        replica = e.get("replica")
        change = (f"{e.get('from_status')} -> {e['to_status']}" if e.get("to_status")
                  else f"replica {replica}" if replica is not None else "")
        events.add_row(ago(e["at"]), change, e["reason"])
    console.print(events)
    if hidden:
        console.print(f"[dim]{hidden} earlier event(s) not shown; `gpupool show {w['id']} --all` shows them[/dim]")


def _print_tasks(w: JsonObject) -> None:
    shown = w["tasks"]
    tasks = table("INDEX", "ID", "STATUS", "MESSAGE", title="tasks")
    for t in shown:
        tasks.add_row(str(t["index"]), str(t["id"]), status_text(t["status"]), str(t.get("message") or ""))
    console.print(tasks)
    more = int((w.get("array") or {}).get("tasks", 0)) - len(shown)
    if more > 0:
        console.print(f"[dim]{more} more task(s); `gpupool show {w['id']} --all` lists them, "
                      f"`gpupool show {w['id']}.INDEX` shows one[/dim]")


@handle_errors
def logs(workload: WorkloadArg,
         follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the replica ends.")]
         = False,
         replica: Annotated[int, typer.Option("--replica", "-r", help="Which replica (0 is the first).", min=0)]
         = 0,
         tail: Annotated[int | None, typer.Option("--tail", "-n", help="Only the last N lines.", min=0)] = None,
         attempt: Annotated[int | None, typer.Option("--attempt", help="Which run of a retried or preempted "
                                                     "workload (1 is the first; default the current one).",
                                                     min=1)] = None,
         as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line: {replica, line}.")]
         = False) -> None:
    """Print a replica's output (stdout and stderr) of the workload's current run, or of an earlier one. With
    --follow, a workload that has not started yet is waited for."""
    with make_light_client() as client:
        wid = resolve(client, workload)
        told = False
        while True:
            try:
                for line in client.logs(wid, replica=replica, tail=tail, follow=follow, attempt=attempt):
                    typer.echo(json.dumps({"replica": replica, "line": line}) if as_json else line)
                return
            except ConflictError:
                status = client.get_workload(wid, tasks=0)["status"] if follow and attempt is None else None
                if status not in WAITING_TO_START:
                    raise
                if not told:
                    err_console.print(f"[dim]workload {wid} is {status}: waiting for it to start; Ctrl-C to "
                                      "stop[/dim]")
                    told = True
                time.sleep(START_POLL_S)


@handle_errors
def cancel(workload: Annotated[str, typer.Argument(help="The workload's id, or its name (the newest of that "
                                                    "name that has not ended); ID.INDEX for one task of a job "
                                                    "array.")],
           as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """Cancel a workload: pending ones end at once, running replicas are stopped (SIGTERM, then SIGKILL). A job
    array is cancelled with all its tasks; ID.INDEX cancels one task."""
    with make_light_client() as client:
        w = client.cancel(resolve(client, workload, active=True))
    if as_json:
        print_json(w)
    else:
        console.print(f"workload {w['id']} ({w['name']}): {status_text(w['status'])}")


def register(app: typer.Typer) -> None:
    """Add the workload commands to the root app."""
    app.command()(submit)
    app.command("ls")(ls)
    app.command()(show)
    app.command()(logs)
    app.command()(cancel)
