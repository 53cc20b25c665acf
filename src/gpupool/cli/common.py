"""What every CLI command shares: the client, error display and exit codes, --json output, human formatting.

Exit codes (documented in docs/cli.md): 0 success; 1 the command ran but the answer is "no" (a workload that
did not succeed, a plan that does not fit) or the server failed; 2 usage error (a bad option or argument, an
invalid spec or amount); 3 not found; 4 refused (not signed in, not allowed, contradicts the current state, or
can never run); 5 the server cannot be reached; 6 timed out waiting. With --json, errors are printed on stdout
as {"error": {"kind", "message", "field", "exit_code"}}.

No command imports the typed client (httpx, pydantic; `sweep show --plot` alone loads an API model): they talk
to the server through the light client (client/light.py, standard library). Rich and the few other heavy
modules are imported when a command first needs them, so that `gpupool` starts fast (see benchmarks/cli).
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
from collections.abc import Callable, Iterable
from enum import IntEnum
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import typer

from gpupool.domain.display import format_cpu, format_gpu, format_memory
from gpupool.domain.errors import (
    AuthenticationError,
    ConflictError,
    GpupoolError,
    NotFoundError,
    PermissionDeniedError,
    StoreBusyError,
    UnsatisfiableError,
    ValidationError,
)

if TYPE_CHECKING:
    from pydantic import BaseModel
    from rich.console import Console
    from rich.table import Table

    from gpupool.client.light import LightClient

P = ParamSpec("P")
R = TypeVar("R")
JSON_HELP = "Print JSON instead of a table (for scripts)."
STATUS_STYLES = {"pending": "yellow", "scheduled": "cyan", "starting": "cyan", "running": "green",
                 "succeeded": "bold green", "failed": "bold red", "cancelled": "dim", "preempted": "magenta",
                 "lost": "red"}
# Rich wraps tables to 80 columns when stdout is not a terminal; piped output is read by grep and scripts,
# so it gets this width instead (wide enough for every table gpupool prints; COLUMNS still wins).
PIPED_WIDTH = 200


class ExitCode(IntEnum):
    """The exit status of a `gpupool` command."""

    OK = 0
    FAILED = 1
    USAGE = 2
    NOT_FOUND = 3
    REFUSED = 4
    UNREACHABLE = 5
    TIMEOUT = 6


# most specific first: (error class, kind shown with --json, exit code)
_ERROR_KINDS: tuple[tuple[type[GpupoolError], str, ExitCode], ...] = (
    (UnsatisfiableError, "unsatisfiable", ExitCode.REFUSED),
    (ValidationError, "validation_error", ExitCode.USAGE),
    (AuthenticationError, "authentication_error", ExitCode.REFUSED),
    (PermissionDeniedError, "permission_denied", ExitCode.REFUSED),
    (NotFoundError, "not_found", ExitCode.NOT_FOUND),
    (ConflictError, "conflict", ExitCode.REFUSED),
    (StoreBusyError, "store_busy", ExitCode.UNREACHABLE),  # like an unreachable server: try again later
)


def make_console(stderr: bool = False) -> Console:
    """A Rich console on stdout (or stderr) that lays tables out PIPED_WIDTH wide when it is not a terminal."""
    import os  # noqa: PLC0415

    from rich.console import Console  # noqa: PLC0415  (lazy: start-up time)

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or os.environ.get("COLUMNS") else PIPED_WIDTH
    return Console(stderr=stderr, highlight=False, width=width)


class _Consoles:
    """Rich consoles, created on first use (importing Rich costs start-up time commands that print no table
    do not need)."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def get(self) -> Console:
        """The console, made on first use."""
        if self._console is None:
            self._console = make_console(stderr=self._stderr)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


console: Any = _Consoles(stderr=False)
err_console: Any = _Consoles(stderr=True)


def make_light_client() -> LightClient:
    """The light client (plain dicts over the standard library) that every command talking to the server uses,
    configured from GPUPOOL_URL / GPUPOOL_TOKEN / $GPUPOOL_HOME/token like the SDK's typed Client: it costs a
    command a fraction of the typed client's start-up time (benchmarks/cli)."""
    from gpupool.client.light import LightClient  # noqa: PLC0415  (lazy: start-up time)

    return LightClient()


def classify(exc: BaseException) -> tuple[str, ExitCode]:
    """The kind (as --json shows it) and exit code of an error a command raised."""
    if isinstance(exc, TimeoutError):
        return "timeout", ExitCode.TIMEOUT
    errors = sys.modules.get("gpupool.client.errors")  # only loaded when a command talked to a server
    if errors is not None and isinstance(exc, errors.ServerUnavailableError):
        return "server_unreachable", ExitCode.UNREACHABLE
    if errors is not None and isinstance(exc, errors.ApiError):
        return "server_error", ExitCode.FAILED
    for cls, kind, code in _ERROR_KINDS:
        if isinstance(exc, cls):
            return kind, code
    return "error", ExitCode.FAILED


def fail(message: str, kind: str, code: ExitCode, *, as_json: bool = False, field: str | None = None) -> typer.Exit:
    """Print an error (one red line, or a JSON object on stdout with --json) and return the Exit to raise."""
    if as_json:
        typer.echo(json.dumps({"error": {"kind": kind, "message": message, "field": field,
                                         "exit_code": int(code)}}, indent=2))
    elif not sys.stderr.isatty():  # what Rich would print there (no colour, no wrapping), without importing it
        sys.stderr.write(f"error: {message}\n")
    else:
        from rich.text import Text  # noqa: PLC0415

        err_console.print(Text.assemble(("error:", "red"), " ", message), soft_wrap=True)
    return typer.Exit(int(code))


def handle_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Show gpupool errors as one red line (a JSON object when the command has --json) and exit with the
    error's documented code; never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except (GpupoolError, TimeoutError) as exc:
            kind, code = classify(exc)
            as_json = bool(kwargs.get("as_json"))
            field = exc.field if isinstance(exc, ValidationError) else None
            message = exc.detail if as_json and isinstance(exc, ValidationError) and field else str(exc)
            raise fail(message, kind, code, as_json=as_json, field=field) from None

    return wrapper


def print_json(data: BaseModel | Iterable[BaseModel] | dict[str, Any] | list[dict[str, Any]]) -> None:
    """Print a model, a list of models, or JSON as the light client returns it (a dict, a list of dicts) as
    indented JSON on stdout."""
    value: Any
    if isinstance(data, dict):
        value = data
    elif hasattr(data, "model_dump"):
        value = data.model_dump(mode="json")
    else:
        value = [item if isinstance(item, dict) else item.model_dump(mode="json") for item in data]
    typer.echo(json.dumps(value, indent=2, sort_keys=False))


def table(*columns: str, title: str | None = None) -> Table:
    """A Rich table with these column headers."""
    from rich.table import Table  # noqa: PLC0415  (lazy: start-up time)

    result = Table(title=title, header_style="bold", box=None, pad_edge=False)
    for column in columns:
        result.add_column(column, overflow="fold")
    return result


def status_text(status: str) -> str:
    """A status with its colour markup."""
    style = STATUS_STYLES.get(status, "")
    return f"[{style}]{status}[/{style}]" if style else status


def ago(timestamp: float | None, now: float | None = None) -> str:
    """'12s', '5m', '3h', '2d' since `timestamp`; '-' for None."""
    if timestamp is None:
        return "-"
    seconds = max(0.0, (now or time.time()) - timestamp)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def amounts(cpu_milli: int | None, memory_mib: int | None, gpu_milli: int | None) -> str:
    """'4 CPU, 16 GiB, 2 GPU' (parts that are None are left out; '-' when all are)."""
    parts = []
    if cpu_milli is not None:
        parts.append(f"{format_cpu(cpu_milli)} CPU")
    if memory_mib is not None:
        parts.append(format_memory(memory_mib))
    if gpu_milli is not None:
        parts.append(f"{format_gpu(gpu_milli)} GPU")
    return ", ".join(parts) or "-"


def parse_pairs(text: str | None, option: str) -> dict[str, str] | None:
    """'gpu=2,memory=64GiB' -> {'gpu': '2', 'memory': '64GiB'}; numbers stay text for the server to parse."""
    if text is None:
        return None
    result: dict[str, Any] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise typer.BadParameter(f"expected NAME=AMOUNT pairs such as gpu=2,memory=64GiB, got {part!r}",
                                     param_hint=option)
        number: Any = value.strip()
        with contextlib.suppress(ValueError):
            number = float(number) if "." in number else int(number)
        result[key.strip()] = number
    return result
