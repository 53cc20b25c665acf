"""`gpupool up`: start the server on this machine."""

from __future__ import annotations

import errno
import logging
import os
import resource
import shutil
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gpupool.cli.common import err_console
from gpupool.domain.errors import GpupoolError

if TYPE_CHECKING:
    from gpupool.server.settings import Settings

# Every HTTP connection is a file descriptor, and a `logs -f` follower holds one for as long as it follows:
# 1,000 followers need about 1,100. Distributions often start processes with a soft limit of 1,024, so
# `up` raises its soft limit to the hard one, up to this many (64 times what 1,000 followers need; a
# limit, not an allocation). Nothing in the server uses select(), which cannot watch descriptors >= 1024.
OPEN_FILES_WANTED = 65_536


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def path_hint(path: str | None = None) -> str:
    """A banner line saying how to get the `gpupool` command when the directory it is installed in (that of
    this Python, e.g. .venv/bin after `make run`) is not on PATH; '' when it is."""
    bin_dir = Path(sys.executable).parent
    found = shutil.which("gpupool", path=path if path is not None else os.environ.get("PATH", ""))
    if found and Path(found).resolve().parent == bin_dir.resolve():
        return ""
    activate = bin_dir / "activate"
    how = f"`source {activate}`" if activate.exists() else f"add {bin_dir} to PATH"
    return f"\n  `gpupool` is not on your PATH: {how} in your shell, or run {bin_dir / 'gpupool'}"


def up(host: Annotated[str | None, typer.Option(help="Address to listen on \\[default: 127.0.0.1].")] = None,
       port: Annotated[int | None, typer.Option(help="Port to listen on \\[default: 8700].")] = None,
       home: Annotated[str | None, typer.Option(help="State directory \\[default: $GPUPOOL_HOME, else ~/.gpupool, or "
                                                           "/var/lib/gpupool for root].")]
       = None,
       database_url: Annotated[str | None, typer.Option(help="postgresql://... \\[default: SQLite in the home "
                                                        "directory].")] = None,
       gpus: Annotated[str | None, typer.Option(help="Declare simulated GPUs per node, e.g. 4xA100-80GB.")] = None,
       gpu_description: Annotated[str | None, typer.Option(help="Scripted fake GPUs from a YAML description "
                                                           "(demos and tests; see docs/gpu.md).")] = None,
       gpu_mode: Annotated[str | None, typer.Option(help="Sharing mode of GPUs no admin has set: exclusive, "
                                                    "shared, mps \\[default: shared for --gpus, else exclusive].")]
       = None,
       nodes: Annotated[int | None, typer.Option(help="Declare this many nodes on this host (demos).", min=1)]
       = None,
       node_name: Annotated[str | None, typer.Option(help="Name of the local node \\[default: host name].")] = None,
       cpus: Annotated[float | None, typer.Option(help="CPU cores per node \\[default: this machine's].")] = None,
       memory: Annotated[str | None, typer.Option(help="Memory per node, e.g. 64GiB \\[default: this machine's].")]
       = None,
       policy: Annotated[str | None, typer.Option(help="Placement policy: fgd, binpack, spread, bestfit.")] = None,
       reset_admin_token: Annotated[bool, typer.Option(help="Write a new admin token to the token file.")] = False,
       trust_users: Annotated[bool, typer.Option(help="Single-user pool (not root): allow users of several "
                                                 "projects although they can read each other's files.")] = False,
       log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error.")] = None,
       scheduler_process: Annotated[bool | None, typer.Option(
           "--scheduler-process/--no-scheduler-process",
           help="Run the scheduling loop in a process of its own, on another core than the API (local "
                "executor) \\[default: $GPUPOOL_SCHEDULER_PROCESS, else on with more than one CPU].")] = None,
       reconciler_process: Annotated[bool | None, typer.Option(
           "--reconciler-process/--no-reconciler-process",
           help="Run the reconciler (launching, following and stopping replicas) in a process of its own too "
                "(local executor, no notebook warm pool) \\[default: $GPUPOOL_RECONCILER_PROCESS, else on with more "
                "than one CPU].")] = None,
       ray: Annotated[str | None, typer.Option("--ray", help="Cluster mode: run on the Ray cluster at HOST:PORT (its "
                                               "head), or `auto` on a node of the cluster (see docs/cluster.md).")]
       = None) -> None:
    """Start the gpupool server: API on http://127.0.0.1:8700 (docs at /docs), this machine as the pool.

    The first start creates the administrator and writes their token to $GPUPOOL_HOME/token, which the CLI
    on this machine uses. Settings also come from GPUPOOL_* environment variables; options win."""
    overrides: dict[str, Any] = {
        "host": host, "port": port, "home": home, "database_url": database_url, "gpus": gpus, "gpu_mode": gpu_mode,
        "gpu_description": gpu_description,
        "nodes": nodes, "node_name": node_name, "node_cpus": cpus, "node_memory": memory, "policy": policy,
        "log_level": log_level, "reset_admin_token": reset_admin_token or None, "trust_users": trust_users or None,
        "ray_address": ray, "scheduler_process": scheduler_process,
        "reconciler_process": reconciler_process}
    from pydantic import ValidationError as SettingsError  # noqa: PLC0415  (lazy: `up --help` needs neither)

    from gpupool.server.settings import Settings  # noqa: PLC0415

    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        first = exc.errors()[0]
        err_console.print(f"[red]error:[/red] {'.'.join(str(p) for p in first['loc'])}: {first['msg']}")
        raise typer.Exit(2) from None
    if settings.port and not _port_free(settings.host, settings.port):
        err_console.print(f"[red]error:[/red] port {settings.port} on {settings.host} is in use: is gpupool already "
                          "running? (`gpupool nodes` talks to it) Otherwise choose another --port.")
        raise typer.Exit(1)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.log_level != "debug":  # one INFO line per migration step is noise at every start
        logging.getLogger("alembic").setLevel(logging.WARNING)
    _preflight(settings)
    _preflight_ray(settings)
    token = f"\n  admin token in {settings.token_file}" if settings.token_file.exists() else ""
    err_console.print(f"gpupool on http://{settings.host}:{settings.port} (API docs at /docs)\n  state in "
                      f"{settings.home}{token}{path_hint()}", soft_wrap=True, markup=False)
    import uvicorn  # noqa: PLC0415  (heavy: only `up` needs the server)

    from gpupool.server.app import create_app  # noqa: PLC0415

    raise_open_file_limit()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)


def raise_open_file_limit(wanted: int = OPEN_FILES_WANTED) -> int:
    """Raise this process's soft limit of open files to its hard limit, at most `wanted` (never lowers it);
    returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def _preflight_ray(settings: Settings) -> None:
    """Cluster mode (--ray) needs Ray installed: say how to get it instead of a traceback."""
    if not settings.ray_address:
        return
    try:
        import ray  # noqa: F401, PLC0415  (cluster mode only)
    except ImportError:
        err_console.print("[red]error:[/red] --ray: cluster mode needs Ray on this machine and on every node: "
                          "pip install 'gpupool[ray]'")
        raise typer.Exit(2) from None


def _preflight(settings: Settings) -> None:
    """Check what start-up needs (GPU declaration, database reachable and migrated) with clear errors."""
    from sqlalchemy.exc import SQLAlchemyError  # noqa: PLC0415  (keeps the other commands fast to start)

    from gpupool.gpu.fake import FakeBackend, read_description  # noqa: PLC0415
    from gpupool.server.local_node import parse_declared_gpus  # noqa: PLC0415
    from gpupool.server.state_files import ServerLock, check_user_mode  # noqa: PLC0415
    from gpupool.store.db import Database  # noqa: PLC0415

    try:
        parse_declared_gpus(settings.gpus)
        check_user_mode(settings)
        if settings.gpu_description is not None:
            FakeBackend(read_description(settings.gpu_description)).close()  # validates the description
        db = Database(settings.resolved_database_url)
        try:
            lock = ServerLock(settings, db)  # a clear message now; the server itself holds it for good
            lock.acquire()
            try:
                db.migrate()
            finally:
                lock.release()
        finally:
            db.dispose()
    except GpupoolError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    except ImportError as exc:
        err_console.print(f"[red]error:[/red] the database driver is missing ({exc.name}); for PostgreSQL install "
                          "it with: pip install 'gpupool[postgres]'")
        raise typer.Exit(1) from None
    except SQLAlchemyError as exc:
        err_console.print(f"[red]error:[/red] cannot open the database {Database.describe_url(settings)}: "
                          f"{type(exc.orig or exc).__name__}: {str(exc.orig or exc).strip().splitlines()[0]}")
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    """Add `up` to the root app."""
    app.command()(up)
