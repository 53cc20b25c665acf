"""`gpupool envs create|ls|show|rm`: Python environments built by uv on the server, named in specs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gpupool.cli.common import JSON_HELP, ago, console, handle_errors, make_light_client, print_json, table

envs_app = typer.Typer(help="Python environments built by uv: create, list, show, remove.", no_args_is_help=True)
NameArg = Annotated[str, typer.Argument(help="The environment's name.")]


@envs_app.command()
@handle_errors
def create(name: NameArg,
           python: Annotated[str, typer.Option(help="The Python version, e.g. 3.11.")] = "3.11",
           packages: Annotated[str, typer.Option(help='Requirements, space-separated: "torch==2.13.0 numpy".')] = "",
           requirements: Annotated[Path | None, typer.Option(help="A requirements file (plain requirements only).")]
           = None,
           as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """Build an environment (once per spec: the same spec again is found in the cache) and name it. Name it in
    a spec with `environment: NAME`; a notebook's environment needs jupyterlab."""
    text = requirements.read_text() if requirements is not None else ""
    with make_light_client() as client, console.status(f"building environment {name} with uv ..."):
        env = client.create_environment(name, python=python, packages=packages, requirements=text)
    if as_json:
        print_json(env)
    else:
        how = "found in the cache" if env.get("cached") else "built"
        console.print(f"environment [bold]{env['name']}[/bold] {how} (python {env['python']}, "
                      f"{len(env['requirements'])} requirement(s), hash {env['hash']})")


@envs_app.command("ls")
@handle_errors
def ls(as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """List the environments you see: the shared ones (made by an administrator) and your own."""
    with make_light_client() as client:
        items = client.environments()
    if as_json:
        print_json(items)
        return
    out = table("NAME", "PYTHON", "REQUIREMENTS", "OWNER", "SIZE", "CREATED", "HASH")
    for e in items:
        owner = f"{e['owner']} (shared)" if e.get("shared", True) else e["owner"]
        out.add_row(e["name"], e["python"], " ".join(e["requirements"]), owner, _size(int(e.get("size_bytes", 0))),
                    ago(e["created_at"]) + " ago", e["hash"])
    console.print(out)


@envs_app.command()
@handle_errors
def show(name: NameArg, as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """Show an environment and its build log."""
    with make_light_client() as client:
        env = client.environment(name)
    if as_json:
        print_json(env)
        return
    console.print(f"[bold]{env['name']}[/bold]: python {env['python']}; {' '.join(env['requirements'])}\n"
                  f"owner {env['owner']}{' (shared)' if env.get('shared', True) else ''}, "
                  f"{_size(int(env.get('size_bytes', 0)))}, hash {env['hash']}, at {env['path']}\n", soft_wrap=True)
    console.print(env.get("log", ""), markup=False, highlight=False, soft_wrap=True)


@envs_app.command("rm")
@handle_errors
def rm(name: NameArg) -> None:
    """Remove an environment (its owner or an administrator)."""
    with make_light_client() as client:
        client.remove_environment(name)
    console.print(f"environment {name} removed")


def _size(size_bytes: int) -> str:
    """Bytes as MiB below a GiB, else GiB (two decimals)."""
    return f"{size_bytes / 2**20:.1f} MiB" if size_bytes < 2**30 else f"{size_bytes / 2**30:.2f} GiB"
