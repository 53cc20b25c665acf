"""Everyday verbs around a workload's life: `whoami`, `wait ID`, `resubmit ID`."""

from __future__ import annotations

from typing import Annotated

import typer

from gpupool.cli.common import JSON_HELP, ExitCode, console, handle_errors, make_light_client, print_json, status_text
from gpupool.cli.workloads import WorkloadArg, array_counts, resolve
from gpupool.domain.status import TERMINAL_STATUSES, WorkloadStatus

FOREVER_S = 7 * 86400  # "no timeout": a week, longer than any max_runtime a pool is likely to allow
_ENDED = {s.value for s in TERMINAL_STATUSES}


@handle_errors
def whoami(as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """Who this token is: your user, whether you administer the pool, your projects and roles, the server."""
    with make_light_client() as client:
        me = client.whoami()
        url = client.url
    if as_json:
        print_json(me)
        return
    projects = ", ".join(f"{m['project']} ({m['role']})" for m in me.get("projects", ())) or "none"
    console.print(f"{me['name']}{' (administrator)' if me.get('is_admin') else ''} on {url}\nprojects: {projects}",
                  soft_wrap=True)


@handle_errors
def wait(workload: WorkloadArg,
         status: Annotated[list[str] | None, typer.Option("--for", help="Wait for these statuses (repeatable), "
                                                          "e.g. --for running \\[default: any end].")] = None,
         timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds (exit 6).", min=0)]
         = None,
         as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """Wait until a workload ends (or reaches a --for status). Exit 0 when it succeeded or reached the status
    asked for, 1 when it ended otherwise, 6 on --timeout."""
    wanted = set(status or ())
    unknown = sorted(wanted - {s.value for s in WorkloadStatus})
    if unknown:
        raise typer.BadParameter(f"unknown status {unknown[0]!r}; one of "
                                 f"{', '.join(s.value for s in WorkloadStatus)}", param_hint="--for")
    with make_light_client() as client:
        wid = resolve(client, workload)
        done = client.wait(wid, statuses=sorted(wanted | _ENDED) if wanted else None,
                           timeout_s=FOREVER_S if timeout is None else timeout)
    if as_json:
        print_json(done)
    else:
        console.print(f"workload {done['id']} ({done['name']}): {status_text(done['status'])}"
                      + (f" ({done['message']})" if done.get("message") else ""), soft_wrap=True)
        if done.get("array") is not None:
            console.print(f"tasks: {array_counts(done['array'])}", soft_wrap=True)
    if done["status"] not in (wanted or {"succeeded"}):
        raise typer.Exit(ExitCode.FAILED)


@handle_errors
def resubmit(workload: WorkloadArg,
             as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """Submit a workload's spec again as a new workload (same project, queue, command and working directory)."""
    with make_light_client() as client:
        old = client.get_workload(resolve(client, workload))
        result = client.submit(dict(old["spec"]))
    if as_json:
        print_json(result)
        return
    new = result["workload"]
    console.print(f"workload [bold]{new['id']}[/bold] ({new['name']}) submitted to queue {new['queue']} as a "
                  f"copy of {old['id']}: {status_text(new['status'])}")


def register(app: typer.Typer) -> None:
    """Add whoami, wait and resubmit to the root app."""
    app.command()(whoami)
    app.command()(wait)
    app.command()(resubmit)
