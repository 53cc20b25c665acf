"""Entry point of the `gpupool` command: the root Typer app and its command groups.

Each command group lives in a module of its own (`cli/<group>.py`) that exposes `register(app)` (or a Typer
app); this module only names them. A module is imported when one of its commands runs (or for `--help`),
so that `gpupool ls` does not pay for loading the planner, the simulator or the server (benchmarks/cli).
With `--json` anywhere on the command line, usage errors are printed as JSON too (see cli/common.py).
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperGroup

from gpupool import __version__

# command name -> (module under gpupool.cli, the Typer app attribute, or None when the module has register())
LAZY_COMMANDS: dict[str, tuple[str, str | None]] = {
    "up": ("server", None),
    "submit": ("workloads", None), "ls": ("workloads", None), "show": ("workloads", None),
    "logs": ("workloads", None), "cancel": ("workloads", None), "wait": ("workflow", None),
    "resubmit": ("workflow", None), "whoami": ("workflow", None),
    "nodes": ("nodes", None), "queues": ("admin", None), "projects": ("admin", None), "users": ("admin", None),
    "tokens": ("admin", None), "top": ("monitor", None), "report": ("monitor", None),
    "schema": ("schema", None), "plan": ("plan", "plan_app"), "sim": ("sim", "sim_app"),
    "sweep": ("sweeps", "sweep_app"),
    "pipeline": ("pipelines", "pipeline_app"),
    "service": ("services", "service_app"),
    "console": ("console", None),
    "notebook": ("notebooks", "notebook_app"), "port-forward": ("port_forward", None),
    "envs": ("environments", "envs_app"),
}


def _load(name: str) -> Any:
    module_name, attribute = LAZY_COMMANDS[name]
    # __import__ rather than importlib.import_module: `python -X importtime` (benchmarks/cli) only accounts for
    # imports that go through __import__, so the command module's own time would be missing from its figures
    __import__(f"gpupool.cli.{module_name}")
    module = sys.modules[f"gpupool.cli.{module_name}"]
    if attribute is not None:
        command = typer.main.get_command(getattr(module, attribute))
        command.name = name
        return command
    holder = typer.Typer()
    module.register(holder)
    return typer.main.get_group(holder).commands.get(name)


class LazyGroup(TyperGroup):
    """The root group: commands of LAZY_COMMANDS are imported on first use; `--json` usage errors are JSON."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        """Every command name, the root's own first."""
        own = super().list_commands(ctx)
        return own + [name for name in LAZY_COMMANDS if name not in own]

    def get_command(self, ctx: typer.Context, cmd_name: str) -> Any:
        """The command of that name, importing its module when it is one of LAZY_COMMANDS."""
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in LAZY_COMMANDS:
            command = _load(cmd_name)
            if command is not None:
                self.commands[cmd_name] = command
        return command

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        """Run the command line; with --json, a usage error is printed as a JSON error object (exit 2)."""
        argv = list(sys.argv[1:] if args is None else args)
        if "--json" not in argv or not standalone_mode:
            return super().main(argv, prog_name, complete_var, standalone_mode, **extra)
        from gpupool.cli.common import ExitCode, fail  # noqa: PLC0415

        try:
            result = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            sys.exit(ExitCode.FAILED)
        except Exception as exc:
            # Click's usage errors (Typer vendors its own Click, so they are recognised by shape, not class)
            message, code = getattr(exc, "format_message", None), getattr(exc, "exit_code", None)
            if not callable(message) or not isinstance(code, int):
                raise
            hint = getattr(exc, "param_hint", None)
            usage = code == ExitCode.USAGE
            sys.exit(fail(str(message()), "usage_error" if usage else "error", ExitCode.USAGE if usage
                          else ExitCode.FAILED, as_json=True, field=hint if isinstance(hint, str) else None).exit_code)
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(
    name="gpupool",
    cls=LazyGroup,
    help=(
        "gpupool: one shared, fairly scheduled pool of GPU servers. "
        "Run `gpupool COMMAND --help` for details. Exit codes: 0 ok, 1 failed, 2 usage error, 3 not found, "
        "4 refused, 5 server unreachable, 6 timed out."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.command()
def version() -> None:
    """Print the installed gpupool version."""
    typer.echo(__version__)


@app.callback()
def root() -> None:
    """The root group (a callback makes Typer build a group even while only `version` is registered here)."""
