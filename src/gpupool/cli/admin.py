"""Pool and account commands: queues, projects, users, tokens."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated
from urllib.parse import quote

import typer

from gpupool.cli.common import (
    JSON_HELP,
    ago,
    amounts,
    console,
    err_console,
    handle_errors,
    make_light_client,
    parse_pairs,
    print_json,
    table,
)
from gpupool.client.light import API

if TYPE_CHECKING:
    from gpupool.client.light import JsonObject

JsonOption = Annotated[bool, typer.Option("--json", help=JSON_HELP)]
queues_app = typer.Typer(help="Queues (one per project): quotas, weights, lending. Without a command: list them.",
                         invoke_without_command=True, no_args_is_help=False)
projects_app = typer.Typer(help="Projects and their members. Without a command: list your projects.",
                           invoke_without_command=True)
users_app = typer.Typer(help="Users (administrators). Without a command: list users.", invoke_without_command=True)
tokens_app = typer.Typer(help="Your API tokens. Without a command: list them.", invoke_without_command=True)


@queues_app.callback()
@handle_errors
def queues(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List queues: guarantee, limit, weight, lending, usage, running and pending workloads."""
    if ctx.invoked_subcommand is not None:
        return
    with make_light_client() as client:
        found = client.get(f"{API}/queues")
    if as_json:
        print_json(found)
        return
    out = table("QUEUE", "GUARANTEED", "LIMIT", "WEIGHT", "LEND", "USING", "RUNNING", "PENDING")
    for q in found:
        u = q["usage"]
        out.add_row(q["name"], _guaranteed(q), _limit(q), f"{q['weight']:g}", "yes" if q["lend"] else "no",
                    amounts(u["cpu_milli"], u["memory_mib"], u["gpu_milli"]), str(q.get("running", 0)),
                    str(q.get("pending", 0)))
    console.print(out)


def _guaranteed(q: JsonObject) -> str:
    g = q["guaranteed"]
    return amounts(g["cpu_milli"], g["memory_mib"], g["gpu_milli"])


def _limit(q: JsonObject) -> str:
    lim = q["limit"]
    if all(v is None for v in (lim["cpu_milli"], lim["memory_mib"], lim["gpu_milli"])):
        return "none"
    return amounts(lim["cpu_milli"], lim["memory_mib"], lim["gpu_milli"])


@queues_app.command("set")
@handle_errors
def set_queue(name: Annotated[str, typer.Argument(help="The queue (its project's name).")],
              guaranteed: Annotated[str | None, typer.Option(help="e.g. gpu=2,cpu=16,memory=64GiB; merged into "
                                                             "the queue's (cpu=- removes the CPU guarantee).")]
              = None,
              limit: Annotated[str | None, typer.Option(help="Most it may use, borrowing included, e.g. gpu=4; "
                                                        "merged like --guaranteed (gpu=- removes that ceiling); "
                                                        "'none' removes every ceiling.")] = None,
              weight: Annotated[float | None, typer.Option(help="Share of idle capacity (default 1).", min=0.001)]
              = None,
              lend: Annotated[bool | None, typer.Option("--lend/--no-lend", help="May others borrow its idle "
                                                        "guarantee?")] = None,
              strict_fifo: Annotated[bool | None, typer.Option("--strict-fifo/--no-strict-fifo", help="A blocked "
                                                               "head blocks the rest of the queue.")] = None,
              as_json: JsonOption = False) -> None:
    """Change a queue's quota (administrators); prints the whole queue after the change, and warns when a
    guarantee, or all queues' together, exceed the pool."""
    limit_pairs = {} if limit is not None and limit.strip().lower() == "none" else parse_pairs(limit, "--limit")
    with make_light_client() as client:
        q = client.send("PUT", f"{API}/queues/{quote(name)}", {
            "guaranteed": parse_pairs(guaranteed, "--guaranteed"), "limit": limit_pairs, "weight": weight,
            "lend": lend, "strict_fifo": strict_fifo})
    for warning in q.get("warnings", ()):
        err_console.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)
    if as_json:
        print_json(q)
    else:
        console.print(f"queue {q['name']}: guaranteed {_guaranteed(q)}; limit {_limit(q)}; weight {q['weight']:g}; "
                      f"lend {'yes' if q['lend'] else 'no'}; strict FIFO {'yes' if q['strict_fifo'] else 'no'}",
                      soft_wrap=True)


@projects_app.callback()
@handle_errors
def projects(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List your projects (all of them for administrators) with members and roles."""
    if ctx.invoked_subcommand is not None:
        return
    with make_light_client() as client:
        found = client.get(f"{API}/projects")
    if as_json:
        print_json(found)
        return
    from gpupool.domain.display import duration_text  # noqa: PLC0415

    out = table("PROJECT", "YOUR ROLE", "MEMBERS", "NOTEBOOK IDLE CAP", "CREATED")
    for p in found:
        members = ", ".join(f"{m['user']} ({m['role']})" for m in p.get("members", ()))
        cap = p.get("max_idle_timeout_s")
        out.add_row(p["name"], p.get("role") or "-", members or "-", "-" if cap is None else duration_text(cap),
                    ago(p["created_at"]) + " ago")
    console.print(out)


@projects_app.command("create")
@handle_errors
def create_project(name: Annotated[str, typer.Argument(help="Lower-case letters, digits, '-' or '_'.")],
                   as_json: JsonOption = False) -> None:
    """Create a project and its queue (administrators); you become its admin."""
    with make_light_client() as client:
        p = client.send("POST", f"{API}/projects", {"name": name})
    if as_json:
        print_json(p)
    else:
        console.print(f"project {p['name']} created with queue {p['name']}; set its quota with "
                      f"`gpupool queues set {p['name']} --guaranteed gpu=N`")


@projects_app.command("add-member")
@handle_errors
def add_member(project: Annotated[str, typer.Argument(help="The project.")],
               user: Annotated[str, typer.Argument(help="The user.")],
               role: Annotated[str, typer.Option(help="admin, member or viewer.")] = "member",
               as_json: JsonOption = False) -> None:
    """Give a user a role in a project (administrators and the project's admins)."""
    with make_light_client() as client:
        p = client.send("PUT", f"{API}/projects/{quote(project)}/members",
                        {"user": user, "role": role})
    print_json(p) if as_json else console.print(f"{user} is now {role} of project {p['name']}")


@projects_app.command("set-idle-cap")
@handle_errors
def set_idle_cap(project: Annotated[str, typer.Argument(help="The project.")],
                 cap: Annotated[str, typer.Argument(help="Longest idle_timeout of its notebooks (4h, 30m), or "
                                                         "none to remove the cap.")],
                 as_json: JsonOption = False) -> None:
    """Cap the idle_timeout of a project's notebooks (administrators and the project's admins): a notebook
    asking longer, or off, is culled after the cap."""
    from gpupool.domain.display import duration_text  # noqa: PLC0415

    with make_light_client() as client:
        p = client.send("PUT", f"{API}/projects/{quote(project)}/idle-cap", {"max_idle_timeout": cap})
    if as_json:
        print_json(p)
    elif p.get("max_idle_timeout_s") is None:
        console.print(f"project {p['name']}: no cap on notebooks' idle_timeout")
    else:
        console.print(f"project {p['name']}: notebooks are culled after at most "
                      f"{duration_text(p['max_idle_timeout_s'])} idle")


@projects_app.command("remove-member")
@handle_errors
def remove_member(project: Annotated[str, typer.Argument(help="The project.")],
                  user: Annotated[str, typer.Argument(help="The user.")], as_json: JsonOption = False) -> None:
    """Remove a user from a project."""
    with make_light_client() as client:
        p = client.send("DELETE", f"{API}/projects/{quote(project)}/members/{quote(user)}")
    print_json(p) if as_json else console.print(f"{user} removed from project {p['name']}")


@users_app.callback()
@handle_errors
def users(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List users (administrators see everyone, others themselves)."""
    if ctx.invoked_subcommand is not None:
        return
    with make_light_client() as client:
        found = client.get(f"{API}/users")
    if as_json:
        print_json(found)
        return
    out = table("USER", "ADMIN", "PROJECTS", "CREATED")
    for u in found:
        memberships = ", ".join(f"{m['project']} ({m['role']})" for m in u.get("projects", ()))
        out.add_row(u["name"], "yes" if u["is_admin"] else "no", memberships or "-", ago(u["created_at"]) + " ago")
    console.print(out)


@users_app.command("create")
@handle_errors
def create_user(name: Annotated[str, typer.Argument(help="Lower-case letters, digits, '-' or '_'.")],
                admin: Annotated[bool, typer.Option(help="Make them an administrator of the pool.")] = False,
                project: Annotated[str | None, typer.Option(help="Add them to this project.")] = None,
                role: Annotated[str, typer.Option(help="Their role in --project: admin, member, viewer.")]
                = "member",
                as_json: JsonOption = False) -> None:
    """Create a user (administrators) and print their first API token (shown once)."""
    with make_light_client() as client:
        created = client.send("POST", f"{API}/users",
                              {"name": name, "admin": admin, "project": project, "role": role})
    if as_json:
        print_json(created)
        return
    if created.get("warning"):
        err_console.print(f"[yellow]note:[/yellow] {created['warning']}")
    console.print(f"user {created['user']['name']} created. Their token (shown once; give it to them):")
    typer.echo(created["token"])


@tokens_app.callback()
@handle_errors
def tokens(ctx: typer.Context, user: Annotated[str | None, typer.Option(help="Another user's (administrators).")]
           = None, as_json: JsonOption = False) -> None:
    """List your API tokens (never their secret)."""
    if ctx.invoked_subcommand is not None:
        return
    with make_light_client() as client:
        found = client.get(f"{API}/tokens", user=user)
    if as_json:
        print_json(found)
        return
    out = table("ID", "NAME", "USER", "PREFIX", "CREATED", "LAST USED", "REVOKED")
    for t in found:
        used = t.get("last_used_at")
        out.add_row(str(t["id"]), t["name"], t["user"], t["prefix"] + "...", ago(t["created_at"]) + " ago",
                    ago(used) + (" ago" if used else ""), "yes" if t["revoked"] else "no")
    console.print(out)


@tokens_app.command("create")
@handle_errors
def create_token(name: Annotated[str, typer.Argument(help="A name to recognise it by.")] = "cli",
                 user: Annotated[str | None, typer.Option(help="For another user (administrators).")] = None,
                 as_json: JsonOption = False) -> None:
    """Create an API token and print it (shown once; use it as GPUPOOL_TOKEN)."""
    with make_light_client() as client:
        created = client.send("POST", f"{API}/tokens", {"name": name, "user": user})
    if as_json:
        print_json(created)
    else:
        typer.echo(created["token"])


@tokens_app.command("revoke")
@handle_errors
def revoke_token(token_id: Annotated[int, typer.Argument(help="The token id (from `gpupool tokens`).")],
                 as_json: JsonOption = False) -> None:
    """Revoke an API token; calls with it fail from now on."""
    with make_light_client() as client:
        t = client.send("DELETE", f"{API}/tokens/{token_id}")
    print_json(t) if as_json else console.print(f"token {t['id']} ({t['name']}) revoked")


def register(app: typer.Typer) -> None:
    """Add the pool and account commands to the root app."""
    app.add_typer(queues_app, name="queues")
    app.add_typer(projects_app, name="projects")
    app.add_typer(users_app, name="users")
    app.add_typer(tokens_app, name="tokens")
