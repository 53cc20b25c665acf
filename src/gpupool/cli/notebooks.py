"""`gpupool notebook create|open|ls|stop|start`: JupyterLab on the pool, behind the server's proxy."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gpupool.cli.common import (
    JSON_HELP,
    console,
    err_console,
    handle_errors,
    make_light_client,
    print_json,
    status_text,
)

if TYPE_CHECKING:
    from gpupool.client.light import LightClient

notebook_app = typer.Typer(help="JupyterLab notebooks on the pool: create, open, list, stop, start.",
                           no_args_is_help=True)
# Cold JupyterLab starts in 2-4 s here; the scheduler may first have to wait for capacity. Five minutes is
# long enough to wait for a busy pool yet ends a script that would otherwise wait forever.
READY_TIMEOUT_S = 300.0
# A stopping Jupyter ends within the server's stop grace period (10 s by default); a minute covers a slow one.
STOPPING_WAIT_S = 60.0
NotebookArg = Annotated[int, typer.Argument(help="The notebook's id (see `gpupool notebook ls`).", min=1)]


def _spec(name: str | None, cpu: str | None, memory: str | None, gpu: str | None, environment: str | None,
          idle_timeout: str | None, project: str | None) -> dict[str, Any]:
    resources: dict[str, Any] = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    if gpu is not None:
        resources["gpu"] = float(gpu) if gpu.replace(".", "", 1).isdigit() else gpu
    spec: dict[str, Any] = {"kind": "notebook", "resources": resources}
    spec |= {k: v for k, v in (("name", name), ("environment", environment), ("idle_timeout", idle_timeout),
                               ("project", project)) if v is not None}
    return spec


def _wait_ready(client: LightClient, notebook_id: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        workload = client.get_workload(notebook_id)
        status = workload["status"]
        if status == "running" and any(e["ready"] for r in workload.get("replica_list", [])
                                       for e in r.get("endpoints", [])):
            return
        if status not in ("pending", "scheduled", "starting", "running"):
            raise TimeoutError(f"notebook {notebook_id} is {status}: {workload['message']}")
        if time.monotonic() > deadline:
            why = f" ({workload['pending_reason']})" if workload.get("pending_reason") else ""
            raise TimeoutError(f"notebook {notebook_id} is still {status}{why} after {timeout_s:g}s; "
                               f"`gpupool notebook open {notebook_id}` once it runs")
        time.sleep(0.2)


def _url(client: LightClient, notebook_id: int) -> str:
    return client.url + str(client.open_notebook(notebook_id)["path"])


@notebook_app.command()
@handle_errors
def create(name: Annotated[str | None, typer.Option(help="A name for it (default: notebook).")] = None,
           gpu: Annotated[str | None, typer.Option(help="GPUs: 1, 0.25 (a share of one card), ...")] = None,
           cpu: Annotated[str | None, typer.Option(help="CPU cores, e.g. 2 or 500m (default 1).")] = None,
           memory: Annotated[str | None, typer.Option(help="Memory, e.g. 16GiB (default 1GiB).")] = None,
           environment: Annotated[str | None, typer.Option(help="A Python environment (see `gpupool envs`).")]
           = None,
           idle_timeout: Annotated[str | None, typer.Option(help="Stop it after this long idle, e.g. 2h, or off "
                                                            "(default: the pool's).")] = None,
           project: Annotated[str | None, typer.Option("--project", "-p", help="The project (default: yours).")]
           = None,
           wait: Annotated[bool, typer.Option(help="Wait until it is ready and print its link.")] = True,
           as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """Create a notebook (JupyterLab in your storage directory) and print a link that opens it."""
    with make_light_client() as client:
        workload = client.submit(_spec(name, cpu, memory, gpu, environment, idle_timeout, project))["workload"]
        notebook_id = workload["id"]
        if not wait:
            print_json(workload) if as_json else console.print(
                f"notebook [bold]{notebook_id}[/bold] submitted; `gpupool notebook open {notebook_id}` once it runs")
            return
        _wait_ready(client, notebook_id, READY_TIMEOUT_S)
        url = _url(client, notebook_id)
    if as_json:
        print_json({"id": notebook_id, "url": url})
    else:
        console.print(f"notebook [bold]{notebook_id}[/bold] is ready: {url}", soft_wrap=True)
        err_console.print("  (the link works once; `gpupool notebook open ID` makes another)")


@notebook_app.command("open")
@handle_errors
def open_(notebook_id: NotebookArg,
          print_only: Annotated[bool, typer.Option("--print", help="Print the link, do not open a browser.")]
          = False) -> None:
    """Open the notebook in your browser (prints the one-time link where there is no browser)."""
    with make_light_client() as client:
        url = _url(client, notebook_id)
    if not print_only:
        import webbrowser  # noqa: PLC0415  (lazy: start-up time)

        try:
            webbrowser.get()
            if webbrowser.open(url):
                console.print(f"opened notebook {notebook_id} in your browser")
                return
        except webbrowser.Error:
            pass
    console.print(url, soft_wrap=True)


@notebook_app.command("ls")
@handle_errors
def ls(show_all: Annotated[bool, typer.Option("--all", "-a", help="Include notebooks that ended.")] = False,
       as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """List notebooks: state, GPU, idle for, culls in; a notebook about to be culled says so."""
    from gpupool.cli.common import table  # noqa: PLC0415
    from gpupool.domain.display import duration_text  # noqa: PLC0415

    with make_light_client() as client:
        items = client.notebooks(include_ended=show_all)
    if as_json:
        print_json(items)
        return
    out = table("ID", "NAME", "USER", "STATUS", "GPU", "IDLE FOR", "CULLS IN", "MESSAGE")
    for n in items:
        idle_for, culls_in = n.get("idle_for_s"), n.get("culls_in_s")
        idle = duration_text(idle_for) if idle_for is not None else "-"
        culls = "never" if n["idle_timeout_s"] == 0 else duration_text(culls_in) if culls_in is not None else "-"
        gpu = f"{n['gpu_milli'] / 1000:g}" if n["gpu_milli"] else "-"
        out.add_row(str(n["id"]), n["name"], n["user"], status_text(n["status"]), gpu, idle, culls, _message(n))
    console.print(out)


def _message(notebook: dict[str, Any]) -> str:
    """What `ls` says of a notebook beside its figures: the culler's warning while one stands ("culls in 4m
    unless used"), else why an ended or waiting notebook is where it is."""
    warning = notebook.get("cull_warning")
    if notebook["status"] == "running":
        return f"warning: {warning['summary']}" if warning else ""
    return str(notebook.get("message", ""))


@notebook_app.command()
@handle_errors
def stop(notebook_id: NotebookArg) -> None:
    """Stop a notebook: frees its GPU, keeps its files; `start` brings it back."""
    with make_light_client() as client:
        workload = client.stop_notebook(notebook_id)
    console.print(f"notebook {notebook_id}: {status_text(workload['status'])} ({workload['message']})",
                  soft_wrap=True)


def _start_when_stopped(client: LightClient, notebook_id: int) -> None:
    from gpupool.domain.errors import ConflictError  # noqa: PLC0415

    deadline = time.monotonic() + STOPPING_WAIT_S
    while True:
        try:
            client.start_notebook(notebook_id)
            return
        except ConflictError as exc:
            if "still stopping" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@notebook_app.command()
@handle_errors
def start(notebook_id: NotebookArg,
          wait: Annotated[bool, typer.Option(help="Wait until it is ready and print its link.")] = True) -> None:
    """Start a stopped (or culled) notebook again: same id, same files."""
    with make_light_client() as client:
        _start_when_stopped(client, notebook_id)
        if not wait:
            console.print(f"notebook {notebook_id} is waiting to be scheduled")
            return
        _wait_ready(client, notebook_id, READY_TIMEOUT_S)
        url = _url(client, notebook_id)
    console.print(f"notebook [bold]{notebook_id}[/bold] is ready: {url}", soft_wrap=True)
