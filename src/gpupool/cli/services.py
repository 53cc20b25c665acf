"""`gpupool service ls|show|scale|update|rollback|logs|tokens`: services (`kind: service`) and their replicas.

A service is submitted like any workload (`gpupool submit service.yaml`); these commands show it by name,
change its replica bounds and print its replicas' output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gpupool.cli.common import JSON_HELP, ago, console, handle_errors, make_light_client, print_json, table
from gpupool.domain.errors import ConflictError

if TYPE_CHECKING:
    from gpupool.client.light import JsonObject

service_app = typer.Typer(help="Inference services: list, show, scale, update, roll back, logs (submit one "
                               "with `gpupool submit`).",
                          no_args_is_help=True)
NameArg = Annotated[str, typer.Argument(help="The service's name.")]


@service_app.command("ls")
@handle_errors
def ls(as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """Running services you may see: state, models, ready replicas of the bounds, load."""
    from gpupool.client.light_services import list_services  # noqa: PLC0415  (lazy: start-up time)

    with make_light_client() as client:
        items = list_services(client)
    if as_json:
        print_json(items)
        return
    out = table("ID", "NAME", "PROJECT", "STATE", "MODELS", "READY/REPLICAS", "MIN..MAX", "IN FLIGHT", "HELD")
    for s in items:
        out.add_row(str(s["id"]), s["name"], s["project"], s["state"], ", ".join(s["models"]),
                    f"{s['ready']}/{s['replicas']}", f"{s['min_replicas']}..{s['max_replicas']}", str(s["inflight"]),
                    str(s["held"]))
    console.print(out)


@service_app.command()
@handle_errors
def show(name: NameArg, as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """A service: its replicas (ready, draining, in flight) and its history (each scaling decision)."""
    from gpupool.client.light_services import show_service  # noqa: PLC0415

    with make_light_client() as client:
        s = show_service(client, name)
    if as_json:
        print_json(s)
        return
    console.print(f"[bold]{s['name']}[/bold] (service {s['id']}, project {s['project']}): {s['state']}; models "
                  f"{', '.join(s['models'])}; replicas {s['min_replicas']}..{s['max_replicas']}; {s['inflight']} "
                  f"in flight, {s['held']} held", soft_wrap=True)
    if s.get("waiting_reason"):
        console.print(f"waiting: {s['waiting_reason']}", soft_wrap=True)
    replicas = table("WORKLOAD", "STATUS", "READY", "DRAINING", "IN FLIGHT", "WHY PENDING")
    for r in s["replica_list"]:
        replicas.add_row(str(r["workload_id"]), r["status"], "yes" if r["ready"] else "no",
                         "yes" if r["draining"] else "no", str(r["inflight"]), r.get("pending_reason") or "")
    console.print(replicas)
    history = table("WHEN", "EVENT")
    for e in s["events"][-15:]:
        history.add_row(ago(e["at"]), e["reason"])
    console.print(history)


@service_app.command()
@handle_errors
def scale(name: NameArg,
          low: Annotated[int | None, typer.Option("--min", help="The fewest replicas (0 allows scale to zero).",
                                                  min=0)] = None,
          high: Annotated[int | None, typer.Option("--max", help="The most replicas.", min=1)] = None,
          as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """Set a service's replica bounds; the autoscaler converges to them."""
    from gpupool.client.light_services import scale_service  # noqa: PLC0415

    if low is None and high is None:
        raise typer.BadParameter("give --min, --max or both")
    with make_light_client() as client:
        s = scale_service(client, name, low, high)
    if as_json:
        print_json(s)
    else:
        console.print(f"service {s['name']}: replicas {s['min_replicas']}..{s['max_replicas']}")


@service_app.command()
@handle_errors
def update(name: NameArg, file: Annotated[Path, typer.Argument(help="The new spec (YAML, kind: service, same "
                                                                    "name).", exists=True, dir_okay=False)],
           as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """Roll out a new spec: new replicas start, take the traffic once ready, the old ones drain and stop."""
    from gpupool.client.light_services import update_service  # noqa: PLC0415

    with make_light_client() as client:
        s = update_service(client, name, file.read_text())
    _changed(s, as_json)


@service_app.command()
@handle_errors
def rollback(name: NameArg, as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """Roll back to the spec before the current one (rolled out like an update)."""
    from gpupool.client.light_services import rollback_service  # noqa: PLC0415

    with make_light_client() as client:
        s = rollback_service(client, name)
    _changed(s, as_json)


def _changed(s: JsonObject, as_json: bool) -> None:
    if as_json:
        print_json(s)
    else:
        last = s["events"][-1]["reason"] if s["events"] else ""
        console.print(f"service {s['name']}: {last}", soft_wrap=True)


@service_app.command()
@handle_errors
def logs(name: NameArg,
         workload: Annotated[int | None, typer.Option("--workload", "-w", help="Which replica, by its workload "
                                                     "id in `service show` (default: the first).", min=1)] = None,
         follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until it ends.")] = False,
         tail: Annotated[int | None, typer.Option("--tail", "-n", help="Only the last N lines.", min=0)] = None,
         as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line: {workload, line}.")]
         = False) -> None:
    """Print the output of one of the service's replicas."""
    from gpupool.client.light_services import show_service  # noqa: PLC0415

    with make_light_client() as client:
        s = show_service(client, name)
        ids = [r["workload_id"] for r in s["replica_list"]]
        chosen = workload if workload is not None else ids[0] if ids else None
        if chosen is None or chosen not in ids:
            raise ConflictError(f"service {name} has no replica workload {chosen}; its replicas: "
                                f"{', '.join(map(str, ids)) or 'none (scaled to zero)'}")
        for line in client.logs(chosen, tail=tail, follow=follow):
            typer.echo(json.dumps({"workload": chosen, "line": line}) if as_json else line)


tokens_app = typer.Typer(help="Service tokens: applications that are not users may call the gateway for one "
                              "project's services, nothing else (administrators and project admins).",
                         no_args_is_help=True)
service_app.add_typer(tokens_app, name="tokens")
ProjectOption = Annotated[str, typer.Option("--project", "-p", help="The project whose services it may call.")]


@tokens_app.command("create")
@handle_errors
def create_token(name: Annotated[str, typer.Argument(help="A name to recognise it by (the application's).")],
                 project: ProjectOption,
                 as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """Create a service token and print it (shown once; the application's OpenAI API key)."""
    from gpupool.client.light_services import create_service_token  # noqa: PLC0415

    with make_light_client() as client:
        created = create_service_token(client, project, name)
    print_json(created) if as_json else typer.echo(created["token"])


@tokens_app.command("ls")
@handle_errors
def list_tokens(project: ProjectOption,
                as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """The project's service tokens (never their secret)."""
    from gpupool.client.light_services import list_service_tokens  # noqa: PLC0415

    with make_light_client() as client:
        found = list_service_tokens(client, project)
    if as_json:
        print_json(found)
        return
    out = table("ID", "NAME", "PROJECT", "PREFIX", "CREATED BY", "CREATED", "REVOKED")
    for t in found:
        out.add_row(str(t["id"]), t["name"], t["project"], t["prefix"] + "...", t["created_by"],
                    ago(t["created_at"]) + " ago", "yes" if t["revoked"] else "no")
    console.print(out)


@tokens_app.command("revoke")
@handle_errors
def revoke_token(token_id: Annotated[int, typer.Argument(help="The token id (from `service tokens ls`).")],
                 project: ProjectOption,
                 as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """Revoke a service token; the gateway refuses it from now on."""
    from gpupool.client.light_services import revoke_service_token  # noqa: PLC0415

    with make_light_client() as client:
        t = revoke_service_token(client, project, token_id)
    print_json(t) if as_json else console.print(f"service token {t['id']} ({t['name']}) of project {t['project']} "
                                                "revoked")
