"""Entry point of the `gpupool` command: the root Typer app and its command groups.

Each command group lives in a module of its own (`cli/<group>.py`) that exposes a Typer app;
this module only assembles them.
"""

from __future__ import annotations

import typer

from gpupool import __version__
from gpupool.cli import admin, monitor, nodes, schema, server, workloads
from gpupool.cli.plan import plan_app
from gpupool.cli.sim import sim_app

app = typer.Typer(
    name="gpupool",
    help=(
        "gpupool: one shared, fairly scheduled pool of GPU servers. "
        "Run `gpupool COMMAND --help` for details."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(plan_app, name="plan")
app.add_typer(sim_app, name="sim")


@app.command()
def version() -> None:
    """Print the installed gpupool version."""
    typer.echo(__version__)


server.register(app)
workloads.register(app)
nodes.register(app)
admin.register(app)
monitor.register(app)
schema.register(app)
