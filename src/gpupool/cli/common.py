"""What every CLI command shares: the client, error display, --json output, and human formatting."""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from gpupool.client.http import Client
from gpupool.domain.errors import GpupoolError
from gpupool.domain.resources import format_cpu, format_gpu, format_memory

P = ParamSpec("P")
R = TypeVar("R")
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
JSON_HELP = "Print JSON instead of a table (for scripts)."
STATUS_STYLES = {"pending": "yellow", "scheduled": "cyan", "starting": "cyan", "running": "green",
                 "succeeded": "bold green", "failed": "bold red", "cancelled": "dim", "preempted": "magenta",
                 "lost": "red"}


def make_client() -> Client:
    """A client configured from GPUPOOL_URL / GPUPOOL_TOKEN / $GPUPOOL_HOME/token."""
    return Client()


def handle_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Show gpupool errors as one red line and exit with status 1 (never a traceback)."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except GpupoolError as exc:
            err_console.print(f"[red]error:[/red] {exc}", markup=True, soft_wrap=True)
            raise typer.Exit(1) from None
        except TimeoutError as exc:
            err_console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None

    return wrapper


def print_json(data: BaseModel | Iterable[BaseModel] | dict[str, Any]) -> None:
    """Print a model, a list of models or a dict as indented JSON on stdout."""
    if isinstance(data, BaseModel):
        value: Any = data.model_dump(mode="json")
    elif isinstance(data, dict):
        value = data
    else:
        value = [item.model_dump(mode="json") for item in data]
    typer.echo(json.dumps(value, indent=2, sort_keys=False))


def table(*columns: str, title: str | None = None) -> Table:
    """A Rich table with these column headers."""
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
